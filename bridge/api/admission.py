"""Who may hold a connection slot: a lock-out guard for the LAN listener.

A connection is *pending* from the moment its TCP connection is accepted until its client says a valid
``hello``; then it is *authenticated*.  Without a secret, nobody gets past pending, so the limits are on pending
connections only:

- each peer address may hold at most ``per_address`` pending connections; more are closed at once, before TLS;
- all addresses together may hold at most ``max_connections - reserved`` pending connections, so that the last
  ``reserved`` slots can only be used by clients that logged in.  When that share is full, the newest pending
  connection of the address holding the most of them is dropped to make room, so a till trying to log in from
  its own address is not kept out by a device holding many;
- a pending connection that has not said ``hello`` within the deadline is dropped (the WebSocket server does it).

Offenders are logged once per address and episode (address and count), not once per socket: a warning the
first time an address is refused or dropped, and a summary when it holds no pending connection any more.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Optional

from twisted.logger import Logger

#: Seconds a connection may stay without a valid ``hello`` (TLS, the WebSocket handshake and hello take
#: milliseconds on a LAN).
HELLO_DEADLINE = 10.0
#: Pending connections one peer address may hold.  A till needs one; a local Odoo with several workers a few.
PENDING_PER_ADDRESS = 8


def reserved_slots(max_connections: int) -> int:
    """Slots kept for authenticated clients: a quarter of them, at least one when there are two or more."""
    return max(1 if max_connections > 1 else 0, max_connections // 4)


class _Offender:
    __slots__ = ("refused", "dropped", "warned")

    def __init__(self) -> None:
        self.refused = 0
        self.dropped = 0
        self.warned = False


class Admission:
    """Counts pending connections per peer address and decides who gets a slot."""

    log = Logger()

    def __init__(self, max_connections: int, per_address: int = PENDING_PER_ADDRESS) -> None:
        self.max_pending = max(1, max_connections - reserved_slots(max_connections))
        self.per_address = per_address
        # address -> its pending connections, oldest first (each a callable that drops it)
        self._pending: dict[str, "OrderedDict[int, Callable[[], Any]]"] = {}
        self._total = 0
        self._offenders: dict[str, _Offender] = {}

    @property
    def pending(self) -> int:
        return self._total

    def pending_from(self, address: str) -> int:
        return len(self._pending.get(address, ()))

    def admit(self, address: str, token: int, drop: Callable[[], Any]) -> bool:
        """Take a pending slot for a new connection from ``address``; False if it must be closed at once.
        ``drop`` is called if the connection later has to give its slot to another one."""
        mine = self._pending.get(address)
        if mine is not None and len(mine) >= self.per_address:
            self._offence(address, refused=1)
            return False
        if self._total >= self.max_pending and not self._make_room(address):
            self._offence(address, refused=1)
            return False
        self._pending.setdefault(address, OrderedDict())[token] = drop
        self._total += 1
        return True

    def authenticated(self, address: str, token: int) -> None:
        """The connection said hello: it no longer counts as pending."""
        self._release(address, token)

    def gone(self, address: str, token: int) -> None:
        """The connection closed (whatever the reason)."""
        self._release(address, token)

    def hello_overdue(self, address: str) -> None:
        """A connection from ``address`` is being dropped for not saying hello in time."""
        self._offence(address, dropped=1)

    def _make_room(self, address: str) -> bool:
        biggest: Optional[str] = None
        for holder, connections in self._pending.items():
            if biggest is None or len(connections) > len(self._pending[biggest]):
                biggest = holder
        if biggest is None or biggest == address or len(self._pending[biggest]) < 2:
            return False
        token, drop = next(iter(self._pending[biggest].items()))
        self._release(biggest, token)
        self._offence(biggest, dropped=1)
        drop()
        return True

    def _release(self, address: str, token: int) -> None:
        mine = self._pending.get(address)
        if mine is None or token not in mine:
            return
        del mine[token]
        self._total -= 1
        if not mine:
            del self._pending[address]
            offender = self._offenders.pop(address, None)
            if offender is not None:
                self.log.info("Connections from {peer} that did not log in: {refused} refused, {dropped} dropped; "
                              "it holds none now", peer=address, refused=offender.refused,
                              dropped=offender.dropped)

    def _offence(self, address: str, refused: int = 0, dropped: int = 0) -> None:
        offender = self._offenders.setdefault(address, _Offender())
        offender.refused += refused
        offender.dropped += dropped
        if not offender.warned:
            offender.warned = True
            self.log.warn("Connections from {peer} are being refused or dropped: it holds {count} connection(s) "
                          "that did not log in (at most {limit} per address; hello within {deadline:.0f} s). "
                          "Other offences from it are counted, not logged, until it holds none",
                          peer=address, count=self.pending_from(address), limit=self.per_address,
                          deadline=HELLO_DEADLINE)
