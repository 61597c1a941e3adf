"""The serial device's life cycle, written out (as :mod:`bridge.core.states` does for payments).

::

    closed --start--> opening --opened--> open --device lost--> opening (after the backoff)
                       |   ^                |  \\--deaf terminal--> waking --closed--> opening
                       |   \\--open failed--/   \\--stop--> stopping --closed--> closed
                       \\--stop--> closed            (waking --stop--> stopping)

``opening``: an open (or reopen) is scheduled, the device is not open; ``open``: the port is open and the link
runs; ``waking``: the port is being closed on purpose, to reopen it for a terminal that stopped answering;
``stopping``: the port is being closed for good (shutdown); ``closed``: not started, or stopped.
"""

from __future__ import annotations

CLOSED = "closed"
OPENING = "opening"
OPEN = "open"
WAKING = "waking"
STOPPING = "stopping"

TRANSITIONS: dict[str, frozenset[str]] = {
    CLOSED: frozenset({OPENING}),
    OPENING: frozenset({OPEN, OPENING, CLOSED}),
    OPEN: frozenset({OPENING, WAKING, STOPPING}),
    WAKING: frozenset({OPENING, STOPPING}),
    STOPPING: frozenset({STOPPING, CLOSED, OPENING}),
}


class IllegalDeviceTransition(Exception):
    """A programming error: the driver tried a move the device's life cycle does not have."""


def check(current: str, new: str) -> None:
    if new not in TRANSITIONS[current]:
        raise IllegalDeviceTransition(f"{current} -> {new}")
