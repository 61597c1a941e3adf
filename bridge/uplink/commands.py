"""Commands over HTTPS, the uplink's source of truth: fetch what Odoo has queued, run it, acknowledge it.

Each command is exactly a LAN command (``{id, op, ts, args, sig}``, signed with the uplink client's inbound
secret) and runs through the same :class:`~bridge.api.session.Session` checks and the same PaymentService as a
LAN client's: signature, freshness, replay, rights, then the op.  A command id seen twice (fetched again before
its acknowledgement reached Odoo, or also sent over the LAN) starts one payment: the journal's command id is
unique.  The reply (signed with the outbound secret, as on the LAN) goes back in the acknowledgement.

The bridge's own requests are signed JSON too (``{client, database, ts, nonce, ...}`` with the outbound secret),
so Odoo knows they come from this bridge.  docs/cloud-protocol.md has the routes.
"""

from __future__ import annotations

import json
import uuid
from collections import OrderedDict
from typing import Any, Callable, Optional

from twisted.internet.defer import CancelledError, Deferred, DeferredList, inlineCallbacks, succeed
from twisted.logger import Logger

from bridge.api import signing
from bridge.api.session import Bridge, Session
from bridge.config import ClientConfig
from bridge.errors import BridgeError
from bridge.uplink.config import ACK_PATH, PENDING_PATH, UplinkConfig
from bridge.uplink.https import HTTPS
from bridge.uplink.odoo_session import PROXY_CODES, proxy_words

#: The ops Odoo may queue.  hello and events.* belong to a live connection; the uplink has feedback instead.
UPLINK_OPS = frozenset({"bridge.info", "terminal.list", "terminal.status", "payment.start", "payment.get",
                        "payment.list", "payment.cancel", "payment.refund", "payment.resolve"})
MAX_COMMANDS_PER_FETCH = 50
#: Seconds between periodic fetches while the bus is up: the bus wakes the bridge for each command, so this fetch
#: is only a safety net for a lost notification, and the idle cost stays one request per 5 minutes.
IDLE_INTERVAL = 300.0
#: Replies kept to answer a command fetched again (its acknowledgement was lost) without running it again.
REMEMBERED_REPLIES = 1000
#: Errors that say "not now" rather than "no": the command is not acknowledged and comes back next fetch.
RETRY_LATER = frozenset({"rate_limited"})


class CommandFetcher:
    """Fetches, runs and acknowledges one uplink's commands; :meth:`fetch` coalesces overlapping calls."""

    log = Logger()

    def __init__(self, uplink: UplinkConfig, client: ClientConfig, bridge: Bridge, https: HTTPS, clock: Any,
                 on_result: Callable[[Optional[str]], None] = lambda error: None) -> None:
        self.uplink = uplink
        self.client = client
        self._bridge = bridge
        self._https = https
        self._clock = clock
        self._on_result = on_result
        self._session = Session(bridge, self._on_reply, peer=f"uplink:{uplink.name}")
        self._session.client = client  # the uplink speaks for this client: no hello over HTTPS
        self._waiting: dict[str, Deferred] = {}
        self._current: Optional[str] = None
        self._replies: "OrderedDict[str, dict[str, Any]]" = OrderedDict()
        self._running: Optional[Deferred] = None
        self._again = False
        self._started = False  # start() arms the periodic fetch
        self._stopped = False  # stop(): no fetch any more
        self._timer: Any = None  # the next periodic fetch
        self._bus_up = False
        self.fetches = 0

    # -- life cycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self._started = True
        self.fetch()

    def stop(self) -> Deferred:
        self._started = False
        self._stopped = True
        self._cancel_timer()
        running = self._running
        if running is None:
            return succeed(None)
        waiter: Deferred = Deferred()
        running.addBoth(lambda _: waiter.callback(None) if not waiter.called else None)
        running.cancel()
        return waiter

    # -- fetching -------------------------------------------------------------------------------

    @property
    def interval(self) -> float:
        """Seconds from one fetch to the next periodic one: ``fetch_interval`` while the bus is down (the periodic
        fetch is then how commands arrive), IDLE_INTERVAL (or more) while it is up and wakes the bridge."""
        return max(IDLE_INTERVAL, self.uplink.fetch_interval) if self._bus_up else self.uplink.fetch_interval

    def bus_state(self, connected: bool, error: Optional[str] = None) -> None:
        """The bus connected (fetches come with its wake-ups) or went down (the periodic fetch takes over).  A bus
        lost to an error (not Odoo's routine closes) may mean Odoo is down: fetch now, so that the status says it."""
        if connected == self._bus_up:
            return
        self._bus_up = connected
        if not connected and error:
            self.fetch()
        elif self._timer is not None and self._timer.active():
            remaining = self._timer.getTime() - self._clock.seconds()
            self._timer.reset(min(remaining, self.interval) if not connected else self.interval)

    def fetch(self) -> None:
        """Fetch now (a wake-up, a (re)connect, the timer).  A fetch already running is followed by one more."""
        if self._stopped:
            return
        if self._running is not None:
            self._again = True
            return
        self._cancel_timer()
        self._running = self._fetch()
        self._running.addBoth(self._fetched)

    def _fetched(self, result: Any) -> None:
        self._running = None
        if self._stopped:
            return
        if self._again:
            self._again = False
            self.fetch()
            return
        # The next periodic fetch counts from the last one, whatever made it: an idle bridge with its bus up makes
        # one request per IDLE_INTERVAL, not one more after each wake-up or reconnection.
        if self._started:
            self._timer = self._clock.callLater(self.interval, self.fetch)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _request_body(self, **extra: Any) -> bytes:
        message = {"client": self.client.id, "database": self.uplink.database, "ts": int(self._clock.seconds()),
                   "nonce": uuid.uuid4().hex}
        message.update(extra)
        return json.dumps(signing.signed(message, self.client.secret_out, self.client.algorithm),
                          separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    @inlineCallbacks
    def _fetch(self):
        self.fetches += 1
        try:
            response = yield self._https.request("POST", self.uplink.route(PENDING_PATH), self._request_body(),
                                                 "application/json")
            commands = _parse_pending(response.code, response.body)
        except CancelledError:
            raise
        except BridgeError as e:
            self.log.warn("Uplink {uplink}: could not fetch commands: {error}", uplink=self.uplink.name,
                          error=e.message, code=e.code)
            self._on_result(f"fetching commands: {e.message}")
            return
        self._on_result(None)
        if commands:
            self.log.info("Uplink {uplink}: {count} command(s) pending", uplink=self.uplink.name,
                          count=len(commands))
        yield DeferredList([self._handle(command) for command in commands[:MAX_COMMANDS_PER_FETCH]])

    @inlineCallbacks
    def _handle(self, command: Any):
        command_id = command.get("id") if isinstance(command, dict) else None
        if not isinstance(command_id, str) or not 0 < len(command_id) <= 128:
            self.log.warn("Uplink {uplink}: skipped a pending command without a valid id", uplink=self.uplink.name)
            return
        reply = self._replies.get(command_id)
        if reply is None:
            reply = yield self._run(command)
            if reply is None:
                return
            error = reply.get("error") or {}
            if not reply.get("ok") and error.get("code") in RETRY_LATER:
                return
            self._remember(command_id, reply)
        yield self._ack(command_id, reply)

    def _run(self, command: dict[str, Any]) -> Deferred:
        command_id = command["id"]
        if command.get("op") not in UPLINK_OPS:
            error = BridgeError("unknown_op", f"The operation {command.get('op')!r} cannot be sent through the "
                                              "cloud uplink.")
            return succeed(signing.signed({"re": command_id, "ok": False, "error": error.as_dict()},
                                          self.client.secret_out, self.client.algorithm))
        if command_id in self._waiting:
            return _follow(self._waiting[command_id])
        d: Deferred = Deferred()
        self._waiting[command_id] = d
        self._current = command_id
        try:
            self._session.message_received(json.dumps(command, ensure_ascii=False))
        finally:
            self._current = None
        if not d.called:
            self.log.info("Uplink {uplink}: running {op} {command_id}", uplink=self.uplink.name,
                          op=command.get("op"), command_id=command_id, client=self.client.id)
        return _follow(d)

    def _on_reply(self, message: dict[str, Any]) -> None:
        if "seq" in message and "re" not in message:
            return  # an event: the uplink reports through feedback
        key = message.get("re") if message.get("re") is not None else self._current
        d = self._waiting.pop(key, None) if isinstance(key, str) else None
        if d is None:
            return
        error = message.get("error") or {}
        if not message.get("ok"):
            self.log.warn("Uplink {uplink}: command {command_id} refused: {code} {message}",
                          uplink=self.uplink.name, command_id=key, code=error.get("code"),
                          message=error.get("message"))
        if message.get("re") is None:
            message = signing.signed(dict(message, re=key), self.client.secret_out, self.client.algorithm)
        d.callback(message)

    def _remember(self, command_id: str, reply: dict[str, Any]) -> None:
        self._replies[command_id] = reply
        while len(self._replies) > REMEMBERED_REPLIES:
            self._replies.popitem(last=False)

    @inlineCallbacks
    def _ack(self, command_id: str, reply: dict[str, Any]):
        try:
            response = yield self._https.request("POST", self.uplink.route(ACK_PATH),
                                                 self._request_body(command_id=command_id, reply=reply),
                                                 "application/json")
        except CancelledError:
            raise
        except BridgeError as e:
            self._on_result(f"acknowledging a command: {e.message}")
            return
        if response.code != 200:
            self._on_result(f"acknowledging a command: Odoo answered HTTP {response.code}")
            return


def _parse_pending(code: int, body: bytes) -> list[Any]:
    if code != 200:
        words = {401: "the bridge's signature was refused (check the client's outbound secret in Odoo)",
                 403: "the bridge's signature was refused (check the client's outbound secret in Odoo)",
                 404: "the route is missing (is the terminal bridge module installed in this database?)"}
        if code in PROXY_CODES:
            raise BridgeError("uplink_unreachable", proxy_words(code))
        raise BridgeError("uplink_refused", words.get(code, f"Odoo answered HTTP {code}"))
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise BridgeError("uplink_bad_answer", "Odoo's list of commands is not JSON") from None
    commands = data.get("commands") if isinstance(data, dict) else None
    if not isinstance(commands, list):
        raise BridgeError("uplink_bad_answer", "Odoo's answer has no 'commands' list")
    return commands


def _follow(d: Deferred) -> Deferred:
    """A Deferred with ``d``'s result that leaves ``d``'s own chain alone (several may wait on one command)."""
    follower: Deferred = Deferred()

    def fire(result: Any) -> Any:
        if not follower.called:
            follower.callback(result)
        return result

    d.addCallback(fire)
    return follower
