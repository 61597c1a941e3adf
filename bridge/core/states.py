"""The payment state machine, written out.

::

    accepted --> in_progress --> approved | declined | cancelled | failed | unknown
        \\-----------------------> failed | cancelled   (never reached the terminal)
                                   unknown --> approved | declined | cancelled | failed   (resolve)

``accepted``: journaled, nothing sent yet.  ``in_progress``: the request may have reached the terminal, so from
here on a lost link means ``unknown``, never ``failed``.  ``unknown`` is left only by an explicit, journaled
resolution (a client with the ``resolve`` right, or a provider that can be asked).
"""

from __future__ import annotations

ACCEPTED = "accepted"
IN_PROGRESS = "in_progress"
APPROVED = "approved"
DECLINED = "declined"
CANCELLED = "cancelled"
FAILED = "failed"
UNKNOWN = "unknown"

ALL_STATES = (ACCEPTED, IN_PROGRESS, APPROVED, DECLINED, CANCELLED, FAILED, UNKNOWN)
#: States a payment ends in.  ``unknown`` is final for the terminal but may still be resolved.
FINAL_STATES = frozenset({APPROVED, DECLINED, CANCELLED, FAILED, UNKNOWN})
#: The states a resolution may set.
RESOLVED_STATES = frozenset({APPROVED, DECLINED, CANCELLED, FAILED})

TRANSITIONS: dict[str, frozenset[str]] = {
    ACCEPTED: frozenset({IN_PROGRESS, FAILED, CANCELLED}),
    IN_PROGRESS: frozenset({APPROVED, DECLINED, CANCELLED, FAILED, UNKNOWN}),
    UNKNOWN: RESOLVED_STATES,
    APPROVED: frozenset(),
    DECLINED: frozenset(),
    CANCELLED: frozenset(),
    FAILED: frozenset(),
}


class IllegalTransition(Exception):
    """A programming error: the code tried a transition the state machine does not have."""


def check_transition(current: str, new: str) -> None:
    if new not in TRANSITIONS[current]:
        raise IllegalTransition(f"{current} -> {new}")


def is_final(state: str) -> bool:
    return state in FINAL_STATES
