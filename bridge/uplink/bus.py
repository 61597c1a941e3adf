"""The wake-up channel: Odoo's bus WebSocket, subscribed to the uplink's secret channel.

A notification only says "look now": the bus may reorder and drop them (protocols/odoo-bus.md §3), so every
wake-up, every (re)connect and a timer make the uplink fetch its commands over HTTPS, and nothing is lost when
the bus is down.

The link, as Odoo expects a non-browser client (§1, §2, §8):

- a public session cookie from ``GET /web/login?db=DB`` (the socket needs a database; no redirects followed);
- ``wss://HOST/websocket`` with ``Origin: https://HOST`` (without it Odoo answers 400) and a User-Agent that is no
  browser's (so Odoo skips its bundle-version check);
- one subscribe frame per connection: the channel and the last notification id handled (persisted), with
  ``check_outdated: false``; nothing else is sent but pings and pongs, far below Odoo's 10 frames per 2 s;
- auto-ping every 25 s (pong within 10 s), and a watchdog that drops a link silent for 90 s;
- reconnection by close code (:func:`after_close`): 4002 at once, 4001 with a new cookie, 1001 after 1-10 s,
  1013 after 30 s or more, 1000 "OUTDATED_VERSION" is a configuration error; otherwise backoff with jitter from
  1 s to 60 s, forever.

No ``ClientService``: it counts a TCP connect as success even when the WebSocket upgrade then fails, and close
codes drive the delays here (protocols/twisted-debian-systemd.md §2).  The loop below is small and explicit.
"""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass
from typing import Any, Callable, Optional, cast

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from OpenSSL import SSL
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from bridge.core.backoff import backoff as _backoff
from bridge.core.reactor_types import ClientEndpoint, DelayedCall, TCPClock
from bridge.errors import BridgeError
from bridge.uplink.config import UplinkConfig
from bridge.uplink.https import HTTPS, USER_AGENT, TLSPolicy, describe
from bridge.uplink.odoo_session import PROXY_CODES, OdooSession, proxy_words
from bridge.uplink.odoo_session import session_cookie  # noqa: F401 - its old home, for the tests

#: Notification types that wake the uplink up; any other type (Odoo's own 'broadcast' ones...) is ignored.
WAKE_UP_TYPES = frozenset({"terminal_bridge/command", "terminal_bridge/wakeup"})

SILENCE_LIMIT = 90.0
AUTO_PING_INTERVAL = 25.0
AUTO_PING_TIMEOUT = 10.0
MAX_MESSAGE = 1 << 20  # Odoo's own MESSAGE_MAX_SIZE
STABLE_AFTER = 10.0  # a link that lived this long was healthy: its close starts the backoff afresh
BACKOFF_MIN, BACKOFF_MAX = 1.0, 60.0
TRY_LATER_MIN = 30.0

STOPPED, CONNECTING, OPEN, WAITING = "stopped", "connecting", "open", "waiting"


# -- pure parts -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    delay: float
    renew_cookie: bool
    failures: int
    error: Optional[str]  # words for the status, None for a routine close


def backoff(failures: int, rand: Callable[[], float]) -> float:
    """1 s, 1.5 s, 2.25 s ... up to 60 s, each with +-25 % jitter, never outside 1-60 s."""
    return _backoff(BACKOFF_MIN, BACKOFF_MAX, factor=1.5, spread=0.25, rand=rand, floor=BACKOFF_MIN,
                    clamp=True)(failures - 1)


def after_close(code: Optional[int], reason: Optional[str], opened: bool, lived: float, failures: int,
                rand: Callable[[], float] = random.random) -> Decision:
    """When to reconnect after a link ended, and whether to fetch a new session cookie first."""
    reason = reason or ""
    if not opened:
        failures += 1
        # Only a 404 says the session leads to no database; renewing after a refused connection or a 5xx would
        # cost a login per attempt, and make every fetch log in again while the bus is down.
        return Decision(backoff(failures, rand), handshake_status(reason) == 404, failures,
                        handshake_words(reason))
    # ``failures`` counts the links in a row that lived less than STABLE_AFTER (failed handshakes before the
    # last opening do not count: the link opened, the outage is over).
    failures = 0 if lived >= STABLE_AFTER else failures + 1
    if code == 4002:  # KEEP_ALIVE_TIMEOUT: Odoo's hourly forced reconnect
        return Decision(0.0 if failures == 0 else backoff(failures, rand), False, failures, None)
    if code == 4001:  # SESSION_EXPIRED: never retry with the same cookie
        # The first one at once, even right after opening (a session that expired during an outage); only
        # 4001 again and again backs off.
        return Decision(0.0 if failures <= 1 else backoff(failures, rand), True, failures,
                        None if failures <= 1 else "Odoo ended the bus session (4001) again")
    if code == 1001:  # going away: Odoo restarting; spread the reconnects of every client
        return Decision(1.0 + 9.0 * rand(), False, failures, None)
    if code == 1013:  # try later: Odoo's rate limit or its database pool
        failures = max(failures, 1)
        return Decision(max(TRY_LATER_MIN, backoff(failures, rand)), False, failures,
                        "Odoo asked the bridge to try later (1013: rate limit or busy server)")
    if code == 1000 and "OUTDATED_VERSION" in reason:
        return Decision(BACKOFF_MAX, False, max(failures, 1),
                        "configuration error: Odoo took the bridge for an outdated browser (1000 OUTDATED_VERSION); "
                        "check that no proxy rewrites the User-Agent")
    failures = max(failures, 1)
    return Decision(backoff(failures, rand), False, failures,
                    None if code == 1000 else f"the bus WebSocket closed ({code} {reason})".strip())


_UPGRADE_FAILED = re.compile(r"upgrade failed \[(\d{3})\]")


def handshake_status(reason: str) -> Optional[int]:
    """The HTTP status of a refused WebSocket upgrade, from autobahn's words ("... upgrade failed [404]: ...")."""
    match = _UPGRADE_FAILED.search(reason or "")
    return int(match.group(1)) if match else None


#: What to fix when Odoo answers the bus's upgrade with an error: Odoo's HTTP workers do not serve /websocket.
NO_WEBSOCKET_ROUTE = ("Odoo answered the bus with an error: route /websocket to Odoo's gevent port (8072) in the "
                      "reverse proxy; threaded Odoo (--workers=0) serves it on its HTTP port")


def handshake_words(reason: str) -> str:
    """Why the bus WebSocket could not be opened, in words an installer can act on."""
    status = handshake_status(reason)
    if status == 500 or 'Unsupported HTTP version "HTTP/1.0"' in reason:
        # Odoo's prefork HTTP workers answer an upgrade with "HTTP/1.0 500" (Couldn't bind the websocket).
        return NO_WEBSOCKET_ROUTE
    if status in PROXY_CODES:
        return proxy_words(status)
    if status == 404:
        return ("Odoo answered the bus with 404: the session leads to no database (a new one is fetched; check the "
                "uplink's database)")
    return f"cannot open the bus WebSocket: {reason}"


def subscribe_frame(channel: str, last: int) -> bytes:
    message = {"event_name": "subscribe", "data": {"channels": [channel], "last": last, "check_outdated": False}}
    return json.dumps(message, separators=(",", ":")).encode("utf-8")


def parse_notifications(payload: bytes) -> list[tuple[int, str]]:
    """(id, type) of each notification in a bus frame; anything malformed is skipped."""
    try:
        batch = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return []
    found = []
    for item in batch if isinstance(batch, list) else []:
        if not isinstance(item, dict):
            continue
        notif_id = item.get("id")
        message = item.get("message")
        kind = message.get("type") if isinstance(message, dict) else None
        if isinstance(notif_id, int) and not isinstance(notif_id, bool):
            found.append((notif_id, kind if isinstance(kind, str) else ""))
    return found


class LastIdStore:
    """The highest notification id handled, in a small JSON file of the state directory."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.last = 0
        try:
            with open(path, encoding="utf-8") as f:
                value = json.load(f).get("last_notification", 0)
            if isinstance(value, int) and value >= 0:
                self.last = value
        except (OSError, ValueError, AttributeError):
            pass

    def save(self, last: int) -> None:
        if last <= self.last:
            return
        self.last = last
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), mode=0o750, exist_ok=True)
        tmp = self.path + ".tmp"
        # Not fsync'd: this runs on the reactor thread, and an id lost to a power cut only makes the bus send
        # a few notifications again, whose commands are fetched and deduplicated like any other.
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"last_notification": last}, f)
        os.replace(tmp, self.path)


# -- the WebSocket --------------------------------------------------------------------------------------


class BusProtocol(WebSocketClientProtocol):
    factory: "BusFactory"
    _lost: Optional[Failure] = None

    def onOpen(self) -> None:
        self.factory.link._opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.link._frame(self)
        if not isBinary:
            self.factory.link._message(payload)

    def onPing(self, payload: bytes) -> None:
        self.factory.link._frame(self)
        super().onPing(payload)

    def onPong(self, payload: bytes) -> None:
        self.factory.link._frame(self)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self._lost = reason  # kept for words: a TLS error is only visible here
        super().connectionLost(reason)

    def onClose(self, wasClean: bool, code: Optional[int], reason: Optional[str]) -> None:
        words = reason
        if self._lost is not None and self._lost.check(SSL.Error):
            words = describe(self._lost, self.factory.url)
        self.factory.link._closed(self, code, words)


class BusFactory(WebSocketClientFactory):
    # Twisted >= 25 types Factory.protocol with a type parameter that autobahn's factories leave at its default
    protocol = BusProtocol  # type: ignore[assignment]

    def __init__(self, link: "BusLink", *, url: str, origin: str, cookie: str, reactor: TCPClock) -> None:
        super().__init__(url, origin=origin, useragent=USER_AGENT, headers={"Cookie": f"session_id={cookie}"},
                         reactor=reactor)
        self.link = link
        self.setProtocolOptions(autoPingInterval=AUTO_PING_INTERVAL, autoPingTimeout=AUTO_PING_TIMEOUT,
                                openHandshakeTimeout=15, closeHandshakeTimeout=5,
                                maxMessagePayloadSize=MAX_MESSAGE, maxFramePayloadSize=MAX_MESSAGE,
                                perMessageCompressionOffers=[])

    def buildProtocol(self, addr: Any) -> Any:
        proto = super().buildProtocol(addr)
        self.link._proto = proto
        return proto


Connect = Callable[[BusFactory], Deferred]


class BusLink:
    """One uplink's bus connection, reconnected forever until stopped.  State: stopped, connecting, open,
    waiting (for the next attempt)."""

    log = Logger()

    def __init__(self, uplink: UplinkConfig, *, reactor: TCPClock, https: HTTPS, store: LastIdStore,
                 on_wakeup: Callable[[], None], on_state: Callable[[bool, Optional[str]], None],
                 policy: Optional[TLSPolicy] = None, connect: Optional[Connect] = None,
                 rand: Callable[[], float] = random.random, session: Optional[OdooSession] = None) -> None:
        self.uplink = uplink
        self._reactor = reactor
        self._https = https
        self.session = session or OdooSession(uplink, https)
        self._store = store
        self._on_wakeup = on_wakeup
        self._on_state = on_state
        self._policy = policy
        self._connect = connect or self._connect_tls
        self._rand = rand
        self.state = STOPPED
        self.failures = 0
        self._short = 0  # links in a row that lived less than STABLE_AFTER
        self.attempts = 0
        self.cookie: Optional[str] = None  # the one this link's socket was opened with
        self._proto: Any = None
        self._opened_at: Optional[float] = None
        self._pending: Optional[Deferred] = None
        self._timer: Optional[DelayedCall] = None
        self._watchdog: Optional[DelayedCall] = None
        self._stopping: Optional[Deferred] = None

    # -- life cycle -----------------------------------------------------------------------------

    def start(self) -> None:
        if self.state == STOPPED:
            self._attempt()

    def stop(self) -> Deferred:
        """Close the link (politely, then by force after 2 s); fires when it is closed."""
        previous, self.state = self.state, STOPPED
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._stop_watchdog()
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        proto, self._proto = self._proto, None
        if proto is None or previous in (STOPPED, WAITING):
            return succeed(None)
        done: Deferred = Deferred()
        self._stopping = done
        self._proto = proto
        if proto.state == proto.STATE_OPEN:
            proto.sendClose(1000)
            # Any: the lambda below puts cancel()'s None in a tuple, which mypy's func-returns-value refuses
            force: Any = self._reactor.callLater(2.0, lambda: proto.dropConnection(abort=True))
            done.addBoth(lambda r: (force.cancel() if force.active() else None, r)[1])
        else:
            proto.dropConnection(abort=True)
        return done

    # -- connecting -----------------------------------------------------------------------------

    def _attempt(self) -> None:
        self._timer = None
        self.state = CONNECTING
        self.attempts += 1
        d = self.session.get()
        d.addCallback(self._open_socket)
        d.addErrback(self._attempt_failed)
        self._pending = d

    def _open_socket(self, cookie: str) -> Deferred:
        self.cookie = cookie
        factory = BusFactory(self, url=self.uplink.websocket_url, origin=self.uplink.origin, cookie=cookie,
                             reactor=self._reactor)
        return self._connect(factory)

    def _connect_tls(self, factory: BusFactory) -> Deferred:
        policy = self._policy or TLSPolicy(self.uplink.ca_file)
        creator = policy.creatorForNetloc(self.uplink.host.encode("idna"), self.uplink.port)
        # HostnameEndpoint is an IStreamClientEndpoint (@implementer, which mypy sees only with the mypy-zope plugin)
        endpoint = cast(ClientEndpoint, wrapClientTLS(creator, cast(IStreamClientEndpoint, HostnameEndpoint(
            self._reactor, self.uplink.host, self.uplink.port, timeout=15))))
        return endpoint.connect(factory)

    def _attempt_failed(self, failure: Failure) -> None:
        self._pending = None
        if failure.check(CancelledError) or self.state == STOPPED:
            return
        if failure.check(BridgeError):
            words = failure.value.message
        else:
            words = describe(failure, self.uplink.websocket_url)
        self._ended(False, None, words)

    # -- the open link --------------------------------------------------------------------------

    def _opened(self, proto: Any) -> None:
        self._pending = None
        if self.state == STOPPED:
            proto.sendClose(1000)
            return
        self.state = OPEN
        self._proto = proto
        self._opened_at = self._reactor.seconds()
        self.failures = self._short  # the failed handshakes before this opening are over
        proto.sendMessage(subscribe_frame(self.uplink.channel, self._store.last))
        self._watchdog = self._reactor.callLater(SILENCE_LIMIT, self._silent)
        self.log.info("Uplink {uplink}: bus connected to {url}", uplink=self.uplink.name,
                      url=self.uplink.websocket_url)
        self._on_state(True, None)
        self._on_wakeup()  # every (re)connect: what was queued meanwhile

    def _frame(self, proto: Any) -> None:
        if proto is self._proto and self._watchdog is not None and self._watchdog.active():
            self._watchdog.reset(SILENCE_LIMIT)

    def _message(self, payload: bytes) -> None:
        notifications = parse_notifications(payload)
        if not notifications:
            return
        try:
            self._store.save(max(notif_id for notif_id, _ in notifications))
        except OSError as e:
            self.log.warn("Uplink {uplink}: cannot save the last notification id: {error}",
                          uplink=self.uplink.name, error=e)
        if any(kind in WAKE_UP_TYPES for _, kind in notifications):
            self._on_wakeup()

    def _silent(self) -> None:
        self._watchdog = None
        proto = self._proto
        self.log.warn("Uplink {uplink}: the bus was silent for {seconds} s; reconnecting", uplink=self.uplink.name,
                      seconds=int(SILENCE_LIMIT))
        if proto is not None:
            proto.dropConnection(abort=True)

    def _stop_watchdog(self) -> None:
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.cancel()
        self._watchdog = None

    def _closed(self, proto: Any, code: Optional[int], reason: Optional[str]) -> None:
        if proto is not self._proto:
            return  # a link already replaced or abandoned
        self._proto = None
        opened = self._opened_at is not None and self.state in (OPEN, STOPPED)
        self._ended(opened, code, reason)

    def _ended(self, opened: bool, code: Optional[int], reason: Optional[str]) -> None:
        self._stop_watchdog()
        lived = self._reactor.seconds() - self._opened_at if opened and self._opened_at is not None else 0.0
        self._opened_at = None
        if self.state == STOPPED:
            stopping, self._stopping = self._stopping, None
            if stopping is not None and not stopping.called:
                stopping.callback(None)
            return
        decision = after_close(code, reason, opened, lived, self.failures, self._rand)
        self.failures = decision.failures
        if opened:
            self._short = 0 if lived >= STABLE_AFTER else self._short + 1
        if decision.renew_cookie:
            self.session.forget(self.cookie)
        self.log.info("Uplink {uplink}: bus link ended ({code} {reason}); next attempt in {delay:.1f} s",
                      uplink=self.uplink.name, code=code, reason=reason or "", delay=decision.delay)
        self._on_state(False, decision.error)
        self.state = WAITING
        self._timer = self._reactor.callLater(decision.delay, self._attempt)
