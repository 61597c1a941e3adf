"""The options of a ``[terminal:NAME] type = stripe`` section, and reading the API key (docs/stripe.md).

Kept apart from the driver so that checking a configuration does not import the stripe library.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Optional

DEFAULT_API_BASE = "https://api.stripe.com"
#: The API version the bridge speaks, sent on every request (stripe-python 5.0 would otherwise send none, so the
#: account's default would apply).  From 2022-11-15 a PaymentIntent has ``latest_charge`` instead of ``charges``.
API_VERSION = "2024-06-20"

_NUMBERS = {"request_timeout": 30.0, "payment_timeout": 120.0, "poll_interval": 1.0, "status_interval": 30.0}
_KNOWN = {"type", "reader", "serial_number", "api_key_file", "api_key_credential", "api_base", "api_version",
          "max_threads", *_NUMBERS}


def parse_stripe_options(options: Mapping[str, str]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Check a ``[terminal:NAME] type = stripe`` section: ``(settings, [(key, problem)])``."""
    settings: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    for key in options:
        if key in ("api_key", "secret_key", "key"):
            problems.append((key, "a Stripe key does not belong in the main configuration: put it in a file "
                                  "readable only by the bridge and name it with api_key_file (or use a systemd "
                                  "credential and api_key_credential)"))
        elif key not in _KNOWN:
            problems.append((key, f"is not a setting of a Stripe reader (known: {', '.join(sorted(_KNOWN))})"))
    reader, serial = options.get("reader", "").strip(), options.get("serial_number", "").strip()
    if bool(reader) == bool(serial):
        problems.append(("reader", "give either reader (tmr_...) or serial_number (as shown on the reader or in "
                                   "the Stripe Dashboard), not both"))
    elif reader and not reader.startswith("tmr_"):
        problems.append(("reader", f"{reader!r} is not a Stripe reader id (they start with tmr_)"))
    settings["reader_id"], settings["serial_number"] = reader or None, serial or None
    key_file, credential = options.get("api_key_file", "").strip(), options.get("api_key_credential", "").strip()
    if bool(key_file) == bool(credential):
        problems.append(("api_key_file", "give either api_key_file (a file holding the restricted key) or "
                                         "api_key_credential (a systemd credential name), not both"))
    elif credential and ("/" in credential or credential.startswith(".")):
        problems.append(("api_key_credential", "is the credential's name as in LoadCredential=, not a path"))
    settings["api_key_file"], settings["api_key_credential"] = key_file or None, credential or None
    settings["api_base"] = options.get("api_base", DEFAULT_API_BASE).strip() or DEFAULT_API_BASE
    if not settings["api_base"].startswith(("https://", "http://127.", "http://localhost", "http://[::1]")):
        problems.append(("api_base", "must be an https:// address (plain http only to this machine, for tests)"))
    settings["api_version"] = options.get("api_version", API_VERSION).strip() or API_VERSION
    for key, default in _NUMBERS.items():
        settings[key] = default
        if key in options:
            try:
                value = float(options[key])
                if not math.isfinite(value) or value <= 0:
                    raise ValueError
                settings[key] = value
            except ValueError:
                problems.append((key, f"{options[key]!r} is not a number of seconds above zero"))
    settings["max_threads"] = 3
    if "max_threads" in options:
        if options["max_threads"].isdigit() and 2 <= int(options["max_threads"]) <= 16:
            settings["max_threads"] = int(options["max_threads"])
        else:
            problems.append(("max_threads", "must be a whole number from 2 to 16"))
    return settings, problems


def read_api_key(key_file: Optional[str], credential: Optional[str],
                 environ: Mapping[str, str] = os.environ) -> tuple[Optional[str], Optional[str]]:
    """``(key, None)`` or ``(None, why not)``; the key itself is never logged."""
    if credential:
        directory = environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            return None, (f"the systemd credential {credential!r} is not available ($CREDENTIALS_DIRECTORY is "
                          "unset: is LoadCredential= in the unit?)")
        key_file = os.path.join(directory, credential)
    assert key_file is not None
    try:
        with open(key_file, encoding="utf-8") as f:
            key = f.read().strip()
    except OSError as error:
        return None, f"cannot read the Stripe key file {key_file}: {error.strerror}"
    if not key.startswith(("sk_", "rk_")) or any(ch.isspace() for ch in key):
        return None, f"{key_file} does not hold a Stripe secret or restricted key (sk_... or rk_...)"
    return key, None
