"""The one backoff policy of the bridge: how long to wait before trying again.

Every retry loop (the journal refusing a payment's end, Stripe's rate limits, a lost serial device, the uplink's
bus and its feedback) takes its delays from :func:`backoff`: ``initial * factor ** attempt``, capped at
``maximum`` (Twisted's :func:`~twisted.application.internet.backoffPolicy` computes that part), then spread by a
random factor in ``[1 - spread, 1 + spread]`` so that many bridges do not retry in step.
"""

from __future__ import annotations

import random
from typing import Callable

from twisted.application.internet import backoffPolicy

Policy = Callable[[int], float]


def backoff(initial: float, maximum: float, factor: float = 2.0, spread: float = 0.0,
            rand: Callable[[], float] = random.random, floor: float = 0.0, clamp: bool = False) -> Policy:
    """The delay before try ``attempt`` (0: the first retry).  With ``clamp``, the spread delay is kept within
    ``[floor, maximum]``; without, it may go ``spread`` beyond them."""
    base: Policy = (backoffPolicy(initial, maximum, factor, jitter=lambda: 0.0) if initial > 0
                    else (lambda attempt: 0.0))

    def delay(attempt: int) -> float:
        value = base(max(attempt, 0))
        if spread:
            value *= 1.0 - spread + 2.0 * spread * rand()
        return min(maximum, max(floor, value)) if clamp else value

    return delay
