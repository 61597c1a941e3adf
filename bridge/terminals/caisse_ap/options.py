"""What the Caisse-AP drivers (TCP and serial) share: option checks and the words for an uncertain outcome."""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

from bridge.terminals.caisse_ap.codec import IDENTITY_FIELDS, identity_problem

MAY_HAVE_PAID = "The customer may have been charged: check the terminal's receipt before trying again."


def positive_number(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(text)
    return value


def parse_timings_and_identity(options: Mapping[str, str], timing_keys: Iterable[str], kwargs: dict[str, Any],
                               problems: list[tuple[str, str]]) -> None:
    """Check the timing options (seconds above zero) and the identity fields (CA, CZ, CJ) of a terminal
    section, adding what is valid to ``kwargs`` and what is not to ``problems``."""
    for key in timing_keys:
        if key in options:
            try:
                kwargs[key] = positive_number(options[key])
            except ValueError:
                problems.append((key, f"{options[key]!r} is not a number of seconds above zero"))
    for key in IDENTITY_FIELDS:
        if key in options:
            problem = identity_problem(key, options[key])
            if problem:
                problems.append((key, f"{options[key]!r} {problem}"))
            else:
                kwargs[key] = options[key]
