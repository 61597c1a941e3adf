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

import hashlib
import json
import uuid
from collections import OrderedDict
from typing import Any, Callable, Optional, Protocol

from twisted.internet.defer import CancelledError, Deferred, DeferredList, inlineCallbacks
from twisted.logger import Logger

from bridge.api import signing
from bridge.api.session import Bridge, Session
from bridge.core.deferreds import OnceMore, follow
from bridge.core.reactor_types import Clock, DelayedCall
from bridge.config import ClientConfig
from bridge.errors import BridgeError
from bridge.uplink.config import ACK_PATH, PENDING_PATH, UplinkConfig
from bridge.uplink.https import MAX_BODY
from bridge.uplink.odoo_session import PROXY_CODES, proxy_words

#: The ops Odoo may queue.  hello and events.* belong to a live connection; the uplink has feedback instead.
UPLINK_OPS = frozenset({"bridge.info", "terminal.list", "terminal.status", "payment.start", "payment.get",
                        "payment.list", "payment.cancel", "payment.refund", "payment.resolve"})
MAX_COMMANDS_PER_FETCH = 50
#: Seconds between periodic fetches while the bus is up: the bus wakes the bridge for each command, so this fetch
#: is only a safety net for a lost notification, and the idle cost stays one request per 5 minutes.
IDLE_INTERVAL = 300.0
#: The largest /pending answer read (the HTTPS client's limit); a larger one is an error, and the next fetch runs.
MAX_PENDING_BYTES = MAX_BODY
#: The largest /ack body Odoo reads (docs/cloud-protocol.md): a larger reply is acknowledged as an error instead,
#: else Odoo would refuse it (413) at every fetch and the command would come back forever.
MAX_ACK_BYTES = 1 << 20
#: Replies kept to answer a command fetched again (its acknowledgement was lost) without running it again.
REMEMBERED_REPLIES = 1000
#: Ops whose repetition the core answers itself (the journal's command id): run again, they return the payment as
#: it is now.  Other ops are answered again from the remembered reply.
IDEMPOTENT_OPS = frozenset({"payment.start", "payment.refund"})
#: Errors that say "not now" rather than "no": the command is not acknowledged and comes back next fetch.
RETRY_LATER = frozenset({"rate_limited"})


class Requester(Protocol):
    """An HTTPS client to Odoo: :class:`bridge.uplink.https.HTTPS`, or the
    :class:`bridge.uplink.odoo_session.OdooSession` that wraps it.  Fires with a Response."""

    def request(self, method: str, url: str, body: Optional[bytes] = None, content_type: Optional[str] = None,
                headers: Optional[dict[str, str]] = None) -> Deferred: ...


class CommandFetcher:
    """Fetches, runs and acknowledges one uplink's commands; :meth:`fetch` coalesces overlapping calls."""

    log = Logger()

    def __init__(self, uplink: UplinkConfig, *, client: ClientConfig, bridge: Bridge, https: Requester, clock: Clock,
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
        #: command id -> (op, digest of args, reply): what ran, to answer it again without running it twice
        self._replies: "OrderedDict[str, tuple[str, str, dict[str, Any]]]" = OrderedDict()
        self._skipped: "OrderedDict[str, None]" = OrderedDict()  # commands without an id, logged once
        self._runs = OnceMore(self._start_fetch, self._fetched)
        self._started = False  # start() arms the periodic fetch
        self._stopped = False  # stop(): no fetch any more
        self._timer: Optional[DelayedCall] = None  # the next periodic fetch
        self._bus_up = False
        self.fetches = 0
        #: payment id -> the acknowledgements on their way that carry that payment (see ack_in_flight)
        self._acks: dict[str, list[Deferred]] = {}

    # -- life cycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self._started = True
        self.fetch()

    def stop(self) -> Deferred:
        self._started = False
        self._stopped = True
        self._cancel_timer()
        return self._runs.stop()

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
        self._runs.ask()

    def _start_fetch(self) -> Deferred:
        self._cancel_timer()
        return self._fetch()

    def _fetched(self, result: Any, again: bool) -> None:
        if self._stopped:
            return
        if again:
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
            if e.code == "uplink_too_large":
                e = BridgeError(e.code, f"Odoo's list of commands is larger than {MAX_PENDING_BYTES} bytes: Odoo "
                                        "must serve fewer or smaller commands at a time (docs/cloud-protocol.md)")
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
        """One served command: the LAN's checks first (size, shape, op, signature, time), then the memory of
        commands already run, then the session (replay, rights, the op).  Every command with a string id gets
        an acknowledgement, refusals included, so that Odoo's queue always moves."""
        command_id = command.get("id") if isinstance(command, dict) else None
        if not isinstance(command_id, str):
            self._skip(command)
            return
        try:
            self._check(command)
        except BridgeError as e:
            self.log.warn("Uplink {uplink}: command refused: {code} {message}", uplink=self.uplink.name,
                          command_id=command_id[:128], code=e.code, message=e.message)
            self._bridge.on_refused(e.code)
            yield self._ack(command_id, self._refusal(command_id, e))
            return
        op, args = command["op"], command.get("args") or {}
        remembered = self._replies.get(command_id)
        if remembered is not None and (remembered[0], remembered[1]) != (op, _digest(args)):
            error = BridgeError("idempotency_mismatch", "This command id was already used for a different "
                                                        "command. Use a new command id.")
            self._bridge.on_refused(error.code)
            yield self._ack(command_id, self._refusal(command_id, error))
            return
        if remembered is not None and op not in IDEMPOTENT_OPS:
            reply = remembered[2]  # ran once already; its acknowledgement was lost
        else:
            # payment.start and payment.refund run through the session again: the journal's command id makes it
            # answer with the payment as it is now, never a second one.
            reply = yield self._run(command)
            if reply is None:
                return
            reply_error = reply.get("error") or {}
            if not reply.get("ok") and reply_error.get("code") in RETRY_LATER:
                return
            self._remember(command_id, op, args, reply)
        yield self._ack(command_id, reply)

    def _check(self, command: dict[str, Any]) -> None:
        """The checks a LAN message meets before anything runs, in the LAN's order; BridgeError if one fails."""
        config = self._bridge.config
        try:
            size = len(json.dumps(command, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
        except (TypeError, ValueError, UnicodeEncodeError):
            raise BridgeError("bad_message", "The command cannot be read as a JSON message.") from None
        if size > config.max_message_bytes:
            raise BridgeError("message_too_large", f"The command is larger than {config.max_message_bytes} bytes.")
        command_id: str = command["id"]  # _handle checked it is a string
        op, ts, args = (command.get(k) for k in ("op", "ts", "args"))
        if not 0 < len(command_id) <= 128:
            raise BridgeError("bad_message", "Every command needs an 'id': a string of 1 to 128 characters.")
        if not isinstance(op, str):
            raise BridgeError("bad_message", "Every command needs an 'op' naming the operation.")
        if args is not None and not isinstance(args, dict):
            raise BridgeError("bad_message", "'args' must be a JSON object.")
        if isinstance(ts, bool) or not isinstance(ts, (int, float)):
            raise BridgeError("bad_message", "Every command needs 'ts': the Unix time in seconds.")
        if op not in UPLINK_OPS:
            raise BridgeError("unknown_op", f"The operation {op!r} cannot be sent through the cloud uplink.")
        if not signing.verify(command, self.client.secret_in, self.client.algorithm):
            raise BridgeError("bad_signature", "The message signature does not match. Check the client's "
                                               "inbound secret.")
        try:
            skew = abs(self._clock.seconds() - ts)
        except OverflowError:
            skew = float("inf")
        if skew > config.clock_skew:
            raise BridgeError("stale_timestamp", "The message time is too far from the bridge's clock. Check the "
                                                 "clocks of both machines.")

    def _refusal(self, command_id: str, error: BridgeError) -> dict[str, Any]:
        return signing.signed({"re": command_id, "ok": False, "error": error.as_dict()}, self.client.secret_out,
                              self.client.algorithm)

    def _skip(self, command: Any) -> None:
        """A command that cannot be acknowledged (no string id): logged once, then skipped each time it comes."""
        try:
            key = hashlib.sha256(json.dumps(command, sort_keys=True).encode("utf-8", "replace")).hexdigest()
        except (TypeError, ValueError):
            key = repr(type(command))
        if key in self._skipped:
            return
        self._skipped[key] = None
        while len(self._skipped) > REMEMBERED_REPLIES:
            self._skipped.popitem(last=False)
        self.log.error("Uplink {uplink}: Odoo served a command without a string id ({what}); it cannot be "
                       "acknowledged and is skipped (fix the Odoo side: every command needs a string id)",
                       uplink=self.uplink.name, what=type(command).__name__ if not isinstance(command, dict)
                       else f"id {command.get('id')!r}"[:80])

    def _run(self, command: dict[str, Any]) -> Deferred:
        command_id = command["id"]
        if command_id in self._waiting:
            return follow(self._waiting[command_id])
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
        return follow(d)

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

    def _remember(self, command_id: str, op: str, args: Any, reply: dict[str, Any]) -> None:
        self._replies[command_id] = (op, _digest(args), reply)
        while len(self._replies) > REMEMBERED_REPLIES:
            self._replies.popitem(last=False)

    def ack_in_flight(self, payment_id: str) -> Optional[Deferred]:
        """A Deferred that fires when every acknowledgement on its way that carries ``payment_id`` has been
        answered (or failed); None when there is none.  The feedback poster waits on it before posting that
        payment's result: Odoo writes the payment's row for both, and two requests writing one row at once make
        Odoo retry the second after a random pause of up to 2 s (a terminal that answers at once, or a payment
        that fails at once, would otherwise race its own acknowledgement)."""
        waiting = self._acks.get(payment_id)
        if not waiting:
            return None
        return DeferredList([follow(d) for d in waiting], consumeErrors=True)

    def _ack(self, command_id: str, reply: dict[str, Any]) -> Deferred:
        found = _payment_of(reply)
        if found is None:
            return self._post_ack(command_id, reply)
        payment_id: str = found  # named again: Debian's mypy does not carry the narrowing into ``ended``
        done: Deferred = Deferred()
        self._acks.setdefault(payment_id, []).append(done)

        def ended(result: Any) -> Any:
            waiting = self._acks.get(payment_id, [])
            if done in waiting:
                waiting.remove(done)
            if not waiting:
                self._acks.pop(payment_id, None)
            done.callback(None)
            return result

        return self._post_ack(command_id, reply).addBoth(ended)

    @inlineCallbacks
    def _post_ack(self, command_id: str, reply: dict[str, Any]):
        body = self._request_body(command_id=command_id, reply=reply)
        # A reply that carries a payment is never turned into a refusal: Odoo would take the payment as refused
        # while it runs (such a reply is a few hundred bytes; its feedback tells Odoo in any case).
        if len(body) > MAX_ACK_BYTES and _payment_of(reply) is None:
            self.log.warn("Uplink {uplink}: the reply to {command_id} is {size} bytes, more than Odoo reads: "
                          "acknowledged as reply_too_large", uplink=self.uplink.name, command_id=command_id[:128],
                          size=len(body))
            error = BridgeError("reply_too_large", f"The reply is larger than the {MAX_ACK_BYTES} bytes Odoo reads; "
                                                   "ask for less at a time (e.g. a smaller 'limit').")
            body = self._request_body(command_id=command_id, reply=self._refusal(command_id, error))
        try:
            response = yield self._https.request("POST", self.uplink.route(ACK_PATH), body, "application/json")
        except CancelledError:
            raise
        except BridgeError as e:
            self._on_result(f"acknowledging a command: {e.message}")
            return
        if response.code != 200:
            self._on_result(f"acknowledging a command: Odoo answered HTTP {response.code}")
            return


def _payment_of(reply: dict[str, Any]) -> Optional[str]:
    """The bridge's payment id a reply describes (payment.start, .refund, .get, .resolve; payment.cancel's
    ``payment``), or None."""
    result = reply.get("result") if reply.get("ok") else None
    if isinstance(result, dict) and isinstance(result.get("payment"), dict):
        result = result["payment"]
    payment_id = result.get("id") if isinstance(result, dict) else None
    return payment_id if isinstance(payment_id, str) else None


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
    except RecursionError:
        raise BridgeError("uplink_bad_answer", "Odoo's list of commands is nested too deeply to read") from None
    commands = data.get("commands") if isinstance(data, dict) else None
    if not isinstance(commands, list):
        raise BridgeError("uplink_bad_answer", "Odoo's answer has no 'commands' list")
    return commands


def _digest(args: Any) -> str:
    return hashlib.sha256(json.dumps(args or {}, sort_keys=True, ensure_ascii=False).encode("utf-8",
                                                                                          "replace")).hexdigest()

