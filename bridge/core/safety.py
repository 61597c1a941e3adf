"""The safety rule of every driver, written once: ``failed`` before the request left, ``unknown`` after.

A payment whose request certainly never reached the terminal ends ``failed`` ("Nothing was charged."); one whose
request may have reached it ends ``unknown`` (the customer may have been charged), never ``approved``.  The two
places where every driver applies the rule the same way live here:

- :func:`not_sent`: ``before_send`` failed, so nothing was written: a :class:`~bridge.errors.BridgeError` keeps
  its code and words (e.g. ``cancelled_before_send``); anything else is a bug, logged with its traceback, and
  the payment is ``journal_unavailable``;
- :func:`crashed`: a bug in the driver during a payment: logged with its traceback, then the rule.

Each driver passes the one thing only it knows: whether its request may have left (``sent``).
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure

from bridge.core import states
from bridge.core.contract import Outcome
from bridge.errors import BridgeError

NOTHING_CHARGED = "Nothing was charged."
INTERNAL_ERROR = "Something went wrong in the bridge during the payment."

#: The reason codes this module gives (they are in docs/protocol.md like every driver's).
REASONS = frozenset({"journal_unavailable", "internal_error"})


def journal_unavailable(device: str = "the terminal") -> str:
    return f"The bridge could not record the payment, so nothing was sent to {device}."


def not_sent(failure: Any, log: Logger, payment_id: str, terminal: str, device: str = "the terminal") -> Outcome:
    """The outcome of a payment whose ``before_send`` failed (``failure``: a Failure or an exception)."""
    error = failure.value if isinstance(failure, Failure) else failure
    if isinstance(error, BridgeError):
        return Outcome(states.FAILED, error.code, error.message)
    log.failure("before_send failed for payment {payment_id}",
                failure if isinstance(failure, Failure) else Failure(error),
                payment_id=payment_id, terminal=terminal)
    return Outcome(states.FAILED, "journal_unavailable", journal_unavailable(device))


def crashed(failure: Failure, log: Logger, payment_id: str, terminal: str, sent: bool, may_have_paid: str,
            **details: Any) -> Outcome:
    """The outcome of a payment during which the driver raised: ``unknown`` when its request may have left
    (``sent``; ``may_have_paid`` says what to check), ``failed`` otherwise."""
    log.failure("Driver error during payment {payment_id}", failure, payment_id=payment_id, terminal=terminal)
    if sent:
        return Outcome(states.UNKNOWN, "internal_error", f"{INTERNAL_ERROR} {may_have_paid}", details)
    return Outcome(states.FAILED, "internal_error", f"{INTERNAL_ERROR} {NOTHING_CHARGED}")
