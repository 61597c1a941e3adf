"""Who may hold a connection slot: a lock-out guard for the LAN listener.

A connection is *pending* from the moment its TCP connection is accepted until its client says a valid
``hello``; then it is *authenticated*.  Without a secret, nobody gets past pending, so the limits are on pending
connections only:

- each peer address may hold at most ``per_address`` pending connections; more are closed at once, before TLS;
- all addresses together may hold at most ``max_connections - reserved`` pending connections, so that the last
  ``reserved`` slots can only be used by clients that logged in.  When that share is full, the oldest pending
  connection of the address holding the most of them is dropped to make room, so a till trying to log in from
  its own address is not kept out by a device holding many;
- a pending connection that has not said ``hello`` within the deadline is dropped (the WebSocket server does it).

Connections from the bridge's own machine (loopback addresses) are not counted: nobody on the shop network can
send from them, and local tools (``make bench``'s 50 clients, a local Odoo) may open many at once.  They still
have the hello deadline.

Offenders are logged once per address and episode (address and counts), not once per socket: a warning the
first time an address is refused, dropped, fails TLS or sends a bad signature, and a summary once it has been
quiet (no offence, no pending connection) for ``QUIET`` seconds.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from typing import Any, Callable, Optional

from twisted.logger import Logger

from bridge.core.reactor_types import Clock, DelayedCall

#: Seconds a connection may stay without a valid ``hello`` (TLS, the WebSocket handshake and hello take
#: milliseconds on a LAN).
HELLO_DEADLINE = 10.0
#: Pending connections one peer address may hold.  A till needs one; a local Odoo with several workers a few.
PENDING_PER_ADDRESS = 8
#: Seconds without an offence (and without a pending connection) that end an offender's episode.
QUIET = 60.0
#: What is counted per offender: the words of its first warning, and of the summary.
KINDS = {
    "refused": ("are being refused: it holds too many connections that did not log in", "refused"),
    "dropped": ("are being dropped: they did not say hello in time", "dropped without hello"),
    "tls": ("fail TLS", "failed TLS"),
    "bad_signature": ("send commands with a bad signature", "with a bad signature"),
}


def is_loopback(address: str) -> bool:
    """True for an address of the bridge's own machine (127.0.0.0/8, ::1, ::ffff:127.x)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def reserved_slots(max_connections: int) -> int:
    """Slots kept for authenticated clients: a quarter of them, at least one when there are two or more."""
    return max(1 if max_connections > 1 else 0, max_connections // 4)


class _Offender:
    __slots__ = ("counts", "last", "call")

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.last = 0.0
        self.call: Optional[DelayedCall] = None


class Admission:
    """Counts pending connections per peer address and decides who gets a slot."""

    log = Logger()

    def __init__(self, max_connections: int, clock: Clock, per_address: int = PENDING_PER_ADDRESS,
                 exempt: Callable[[str], bool] = is_loopback) -> None:
        self._clock = clock
        self.exempt = exempt
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
        if self.exempt(address):
            return True
        mine = self._pending.get(address)
        if mine is not None and len(mine) >= self.per_address:
            self.offence(address, "refused")
            return False
        if self._total >= self.max_pending and not self._make_room(address):
            self.offence(address, "refused")
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
        self.offence(address, "dropped")

    def _make_room(self, address: str) -> bool:
        biggest: Optional[str] = None
        for holder, connections in self._pending.items():
            if biggest is None or len(connections) > len(self._pending[biggest]):
                biggest = holder
        if biggest is None or biggest == address or len(self._pending[biggest]) < 2:
            return False
        token, drop = next(iter(self._pending[biggest].items()))
        self._release(biggest, token)
        self.offence(biggest, "dropped")
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

    def offence(self, address: str, kind: str, detail: str = "") -> None:
        """Count an offence of ``kind`` (a key of KINDS) from ``address``; only the first of an episode is logged,
        with ``detail`` if given."""
        offender = self._offenders.get(address)
        first = offender is None
        if offender is None:
            offender = self._offenders[address] = _Offender()
        offender.counts[kind] = offender.counts.get(kind, 0) + 1
        offender.last = self._clock.seconds()
        if first:
            self.log.warn("Connections from {peer} {what}{detail} ({count} not logged in now; at most {limit} per "
                          "address; hello within {deadline:.0f} s). What follows from {peer} is counted and summed "
                          "up once it has been quiet for {quiet:.0f} s",
                          peer=address, what=KINDS[kind][0], detail=f" ({detail})" if detail else "", kind=kind,
                          count=self.pending_from(address), limit=self.per_address, deadline=HELLO_DEADLINE,
                          quiet=QUIET)
            offender.call = self._clock.callLater(QUIET, self._maybe_quiet, address)

    def _maybe_quiet(self, address: str) -> None:
        offender = self._offenders[address]
        wait = offender.last + QUIET - self._clock.seconds()
        if wait > 0 or self.pending_from(address):
            offender.call = self._clock.callLater(max(wait, 1.0), self._maybe_quiet, address)
            return
        del self._offenders[address]
        summary = ", ".join(f"{count} {KINDS[kind][1]}" for kind, count in offender.counts.items())
        self.log.info("{peer} has been quiet for {quiet:.0f} s; in all, its connections: {summary}", peer=address,
                      quiet=QUIET, summary=summary, **{f"count_{k}": v for k, v in offender.counts.items()})

    def stop(self) -> None:
        """Forget the offenders without their summaries (at shutdown: no timer is left behind)."""
        for offender in self._offenders.values():
            if offender.call is not None and offender.call.active():
                offender.call.cancel()
        self._offenders.clear()
