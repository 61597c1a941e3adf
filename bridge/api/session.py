"""One client's conversation with the bridge, independent of the transport that carries it.

A :class:`Session` takes the text of each message and answers through a ``send`` callable; the LAN WebSocket
server wraps it today and the cloud uplink can wrap it tomorrow.  It checks, in this order: JSON, envelope
shape, authentication (``hello`` first), signature, freshness and replay, rights, then runs the op.  A refusal
at any step changes nothing and answers with a stable error code (docs/protocol.md, "Errors").
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable, Optional, cast

from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.logger import Logger

from bridge import __version__
from bridge.api import signing
from bridge.api.replay import ReplayWindow
from bridge.config import BridgeConfig, ClientConfig
from bridge.core.journal import Event
from bridge.core.payments import PaymentService
from bridge.core.reactor_types import Clock
from bridge.errors import BridgeError

SUBPROTOCOL = "terminal-bridge.v1"
#: Journaled events sent at once on hello or events.resume; the rest follow on the next events.resume.
REPLAY_LIMIT = 1000
PROTOCOL_VERSION = 1
#: Deepest nesting of arrays and objects a message may have (a real command has 2 levels).
MAX_DEPTH = 32

#: What a message could not be read as: not JSON, or not text.
_UNREADABLE = object()

Send = Callable[[dict[str, Any]], None]


class RateLimiter:
    """A token bucket: ``rate`` messages a second, bursts of up to ``burst``."""

    def __init__(self, clock: Clock, rate: float, burst: Optional[float] = None) -> None:
        self._clock = clock
        self._rate = rate
        self._burst = burst if burst is not None else max(rate, 1.0)
        self._tokens = self._burst
        self._last = clock.seconds()

    def allow(self) -> bool:
        now = self._clock.seconds()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


class Bridge:
    """What every session shares: configuration, the payment service, the clock, the seen-ids memory."""

    def __init__(self, config: BridgeConfig, payments: PaymentService, clock: Clock,
                 fingerprint: Optional[str] = None) -> None:
        self.config = config
        self.payments = payments
        self.clock = clock
        self.fingerprint = fingerprint
        self._replays = ReplayWindow(clock, 2 * config.clock_skew)
        #: Sessions that said hello and are still connected; ``on_clients_changed`` hears of each change.
        self.connected: set["Session"] = set()
        self.on_clients_changed: Callable[[], Any] = lambda: None
        #: Hears the error code of every command refused, on any session (the status page counts them).
        self.on_refused: Callable[[str], Any] = lambda code: None
        #: What closes the listeners' connections at shutdown (each returns a Deferred); see close_connections.
        self.closers: list[Callable[[], Any]] = []
        # Sessions streaming events, by client id: one subscription for the bridge, not one per session, so
        # an event costs a dict lookup rather than a call per connected session.
        self._streams: dict[str, set["Session"]] = {}
        payments.subscribe(self._dispatch_event)

    def close_connections(self) -> Deferred:
        """Close every client connection (at shutdown, after the last payment's events were sent)."""
        return DeferredList([maybeDeferred(close) for close in self.closers])

    def stream_events(self, session: "Session", client_id: str) -> None:
        self._streams.setdefault(client_id, set()).add(session)

    def stop_streaming(self, session: "Session") -> None:
        for client_id, sessions in list(self._streams.items()):
            sessions.discard(session)
            if not sessions:
                del self._streams[client_id]

    def _dispatch_event(self, event: Event) -> None:
        for session in list(self._streams.get(event.client_id, ())):
            session.send_event(event)

    def client_connected(self, session: "Session") -> None:
        if session not in self.connected:
            self.connected.add(session)
            self.on_clients_changed()

    def client_gone(self, session: "Session") -> None:
        if session in self.connected:
            self.connected.discard(session)
            self.on_clients_changed()

    def remember(self, client_id: str, message_id: str, ts: float) -> bool:
        """Record a command id; False if it was already seen inside the freshness window (a replay)."""
        return self._replays.first_time(client_id, message_id)


class Session:
    log = Logger()

    def __init__(self, bridge: Bridge, send: Send, peer: str,
                 send_bytes: Optional[Callable[[bytes], None]] = None,
                 on_hello: Callable[[], Any] = lambda: None,
                 on_bad_signature: Optional[Callable[[str], Any]] = None) -> None:
        """``send`` takes each outgoing message as a dict; a transport that carries text may also give
        ``send_bytes``, which then takes the message already serialised (UTF-8 JSON, signed).  ``on_hello`` is
        called when the client has logged in; ``on_bad_signature`` (when given) hears of each bad signature (with the client id it claimed)
        instead of the log (the WebSocket server counts them per address)."""
        self.bridge = bridge
        self._send = send
        self._send_bytes = send_bytes
        self._on_hello = on_hello
        self._on_bad_signature = on_bad_signature
        self.peer = peer
        self.client: Optional[ClientConfig] = None
        self._limiter = RateLimiter(bridge.clock, bridge.config.messages_per_second,
                                    burst=2 * bridge.config.messages_per_second)
        self._sent_seq = 0
        self._closed = False
        self._bad_signatures = 0

    # -- transport side -------------------------------------------------------------------------

    def message_received(self, text: str) -> None:
        """Handle one message.  Whatever it holds, it gets an answer and the connection stays usable."""
        try:
            self._message_received(text)
        except Exception:
            # A bug, never an answer to bad input (tests/test_fuzz.py feeds this millions of messages).
            self.log.failure("A message from {peer} could not be handled", peer=self.peer)
            self._reply_error(None, BridgeError("internal_error", "The bridge hit an internal error; "
                                                                  "it has been logged."))

    def _message_received(self, text: str) -> None:
        allowed = self._limiter.allow()
        message, problem = _parse(text)
        message_id = message.get("id") if isinstance(message, dict) else None
        if not isinstance(message_id, str) or problem is not None:
            message_id = None
        if not allowed:
            # Refused unread, but with its id, so that the client knows which command to send again later.
            self._reply_error(message_id,
                              BridgeError("rate_limited", "Too many messages; slow down and send it again."))
            return
        if problem is not None:
            self._reply_error(None, BridgeError("bad_json", problem))
            return
        if not isinstance(message, dict):
            self._reply_error(None, BridgeError("bad_message", "A message must be a JSON object."))
            return
        try:
            op, args = self._check(message)
        except BridgeError as e:
            self._reply_error(message_id, e)
            return
        assert message_id is not None
        reply_to: str = message_id  # named again: Debian's mypy does not carry the narrowing into the lambdas
        d = maybeDeferred(self._dispatch, op, reply_to, args)
        d.addCallbacks(lambda result: self._reply(reply_to, result),
                       lambda f: self._reply_failure(reply_to, op, f))

    def oversize(self) -> None:
        self.refuse(BridgeError("message_too_large",
                                f"The message is larger than {self.bridge.config.max_message_bytes} bytes."))

    def refuse(self, error: BridgeError) -> None:
        """Answer a message the transport could not even hand over (binary, not UTF-8, too large)."""
        self._reply_error(None, error)

    def connection_lost(self) -> None:
        self._closed = True
        self.bridge.stop_streaming(self)
        self.bridge.client_gone(self)

    # -- checks ---------------------------------------------------------------------------------

    def _check(self, message: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        message_id, op, ts, args = (message.get(k) for k in ("id", "op", "ts", "args"))
        if not isinstance(message_id, str) or not 0 < len(message_id) <= 128:
            raise BridgeError("bad_message", "Every command needs an 'id': a string of 1 to 128 characters.")
        if not isinstance(op, str):
            raise BridgeError("bad_message", "Every command needs an 'op' naming the operation.")
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise BridgeError("bad_message", "'args' must be a JSON object.")
        if isinstance(ts, bool) or not isinstance(ts, (int, float)):
            raise BridgeError("bad_message", "Every command needs 'ts': the Unix time in seconds.")
        if op not in OPS:
            raise BridgeError("unknown_op", f"The bridge does not know the operation {op!r}.")

        client = self.client
        if op == "hello":
            client = self.bridge.config.client_by_id(args.get("client"))
            if client is None:
                raise BridgeError("unknown_client", "This client is not known to the bridge. "
                                                    "Ask store IT to add it with 'terminal-bridge client add'.")
        elif client is None:
            raise BridgeError("not_authenticated", "Say 'hello' first.")

        if not signing.verify(message, client.secret_in, client.algorithm):
            self._bad_signatures += 1
            if self._on_bad_signature is not None:
                self._on_bad_signature(client.id)
            elif self._bad_signatures == 1:  # once per connection: a flood of them is not a flood of log lines
                self.log.warn("Bad signature from {peer} for client {client}", peer=self.peer, client=client.id)
            raise BridgeError("bad_signature", "The message signature does not match. Check the client's "
                                               "inbound secret.")
        try:
            skew = abs(self.bridge.clock.seconds() - float(ts))
        except OverflowError:  # an integer too large for a float: very far from now
            skew = float("inf")
        if not skew <= self.bridge.config.clock_skew:
            away = f"{int(skew)} s" if skew < 1e9 else "years"
            raise BridgeError("stale_timestamp", f"The message time is {away} away from the bridge's "
                                                 "clock. Check the clocks of both machines.")
        # payment.start/refund with a known id is answered with the payment it started: idempotency, not a replay.
        if op not in ("payment.start", "payment.refund") and not self.bridge.remember(client.id, message_id, ts):
            raise BridgeError("replayed", "This command id was already used. Use a new id for each command.")
        right = OPS[op][1]
        if right is not None and right not in client.rights and "admin" not in client.rights:
            raise BridgeError("forbidden", f"This client may not do {op!r} (it needs the {right!r} right).")
        unknown = sorted(set(args) - OP_ARGS[op])
        if unknown:
            raise BridgeError("bad_request", f"{op} does not take the argument(s) {', '.join(map(repr, unknown))}"
                                             "; nothing was done.")
        if op == "hello":
            self.client = client
            self.bridge.client_connected(self)
            self._on_hello()
        return op, args

    # -- replies --------------------------------------------------------------------------------

    def _out(self, message: dict[str, Any]) -> None:
        if self._closed:
            return
        if self._send_bytes is not None:
            # The signature covers the canonical form, which is valid JSON to send as it is: serialise once.
            if self.client is None:
                self._send_bytes(signing.canonical(message))
            else:
                self._send_bytes(signing.signed_bytes(message, self.client.secret_out, self.client.algorithm))
            return
        if self.client is not None:
            message = signing.signed(message, self.client.secret_out, self.client.algorithm)
        self._send(message)

    def _reply(self, message_id: str, result: Any) -> None:
        self._out({"re": message_id, "ok": True, "result": result})

    def _reply_error(self, message_id: Optional[str], error: BridgeError) -> None:
        self.bridge.on_refused(error.code)
        self._out({"re": message_id, "ok": False, "error": error.as_dict()})

    def _reply_failure(self, message_id: str, op: str, failure: Any) -> None:
        if failure.check(BridgeError):
            self._reply_error(message_id, failure.value)
            return
        self.log.failure("Operation {op} failed", failure, op=op)
        self._reply_error(message_id, BridgeError("internal_error", "The bridge hit an internal error; "
                                                                    "it has been logged."))

    # -- events ---------------------------------------------------------------------------------

    def _start_events(self, after: int) -> bool:
        """Send the journaled events after ``after`` (at most REPLAY_LIMIT), then live ones.  True if there
        were more than that: the client asks for the rest with events.resume from the last seq it got."""
        assert self.client is not None
        self.bridge.stream_events(self, self.client.id)
        self._sent_seq = after
        events = self.bridge.payments.events_after(self.client.id, after, limit=REPLAY_LIMIT + 1)
        for event in events[:REPLAY_LIMIT]:
            self.send_event(event)
        return len(events) > REPLAY_LIMIT

    def send_event(self, event: Event) -> None:
        if event.seq <= self._sent_seq:
            return  # already sent by a resume that read it from the journal
        self._sent_seq = event.seq
        text = event.text
        if (text is not None and self._send_bytes is not None and self.client is not None and not self._closed
                and text.startswith("{") and _keys_before_seq(event.body)):
            # The journal's canonical form of the body, with "seq" added last (its keys all sort before "seq",
            # so that is still the canonical form), signed: the body is not serialised again for each event.
            unsigned = text[:-1] + ("," if text != "{}" else "") + f'"seq":{int(event.seq)}}}'
            self._send_bytes(signing.sign_canonical(unsigned.encode("utf-8"), self.client.secret_out,
                                                    self.client.algorithm))
            return
        body = dict(event.body)
        body["seq"] = event.seq
        self._out(body)

    # -- operations -----------------------------------------------------------------------------

    def _dispatch(self, op: str, message_id: str, args: dict[str, Any]) -> Any:
        return OPS[op][0](self, message_id, args)

    def op_hello(self, message_id: str, args: dict[str, Any]) -> dict[str, Any]:
        assert self.client is not None
        payments = self.bridge.payments
        acked = payments.acked(self.client.id)
        self.log.info("Client {client} connected from {peer}", client=self.client.id, peer=self.peer)
        # Events start flowing from the last acknowledged one; events.resume can move the starting point.
        more = self._start_events(acked)
        return {"bridge": self.bridge.config.name, "version": __version__, "protocol": SUBPROTOCOL,
                "client": self.client.id, "rights": sorted(self.client.rights), "acked_seq": acked,
                "last_seq": payments.last_seq(), "more_events": more}

    def op_bridge_info(self, message_id: str, args: dict[str, Any]) -> dict[str, Any]:
        return {"bridge": self.bridge.config.name, "version": __version__, "protocol": SUBPROTOCOL,
                "time": self.bridge.clock.seconds(), "fingerprint": self.bridge.fingerprint,
                "terminals": self.bridge.payments.registry.names()}

    def op_terminal_list(self, message_id: str, args: dict[str, Any]) -> dict[str, Any]:
        registry = self.bridge.payments.registry
        return {"terminals": [registry.status(name) for name in registry.names()]}

    def op_terminal_status(self, message_id: str, args: dict[str, Any]) -> dict[str, Any]:
        # not always a string: the registry answers unknown_terminal for anything that names no terminal
        return self.bridge.payments.registry.status(cast(str, args.get("terminal")))

    def op_payment_start(self, message_id: str, args: dict[str, Any]) -> Deferred:
        assert self.client is not None
        if args.get("kind") == "refund" and not self._may("refund"):
            # money out of the shop, linked to a payment or not, needs the refund right
            raise BridgeError("forbidden", "This client may not start a refund (it needs the 'refund' right).")
        ack = self._carried_ack(args)
        return self._with_ack(ack, self.bridge.payments.start(self.client.id, message_id, args))

    def op_payment_refund(self, message_id: str, args: dict[str, Any]) -> Deferred:
        assert self.client is not None
        ack = self._carried_ack(args)
        return self._with_ack(ack, self.bridge.payments.refund(self.client.id, message_id, args,
                                                               see_all="admin" in self.client.rights))

    def op_payment_get(self, message_id: str, args: dict[str, Any]) -> dict[str, Any]:
        payments = self.bridge.payments
        if "payment_id" in args:
            view = payments.get(args["payment_id"])
        elif isinstance(args.get("command_id"), str):
            assert self.client is not None
            found = payments.get_by_command(self.client.id, args["command_id"])
            if found is None:
                raise BridgeError("unknown_payment", "No payment was started with that command id.")
            view = found
        else:
            raise BridgeError("bad_request", "Name the payment with 'payment_id' or 'command_id'.")
        self._check_owner(view)
        return view

    def op_payment_list(self, message_id: str, args: dict[str, Any]) -> dict[str, Any]:
        assert self.client is not None
        limit = args.get("limit", 50)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 200:
            raise BridgeError("bad_request", "'limit' must be a whole number from 1 to 200.")
        filters: dict[str, Any] = {}
        for key in ("terminal", "state", "cursor"):
            if args.get(key) is not None:
                if not isinstance(args[key], str):
                    raise BridgeError("bad_request", f"'{key}' must be a string.")
                filters[key] = args[key]
        for key in ("since", "until"):
            value = args.get(key)
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not -1e12 < value < 1e12:
                    raise BridgeError("bad_request", f"'{key}' must be a Unix time in seconds.")
                filters[key] = float(value)
        owner = None if "admin" in self.client.rights else self.client.id
        return self.bridge.payments.list(owner, limit=limit, **filters)

    def op_payment_cancel(self, message_id: str, args: dict[str, Any]) -> Deferred:
        assert self.client is not None
        self._check_owner(self.bridge.payments.get(args.get("payment_id")))
        return self.bridge.payments.cancel(args["payment_id"], actor=self.client.id)

    def op_payment_resolve(self, message_id: str, args: dict[str, Any]) -> Deferred:
        assert self.client is not None
        self._check_owner(self.bridge.payments.get(args.get("payment_id")))
        details = {}
        if isinstance(args.get("authorisation"), str):
            details["authorisation"] = args["authorisation"][:32]
        return self.bridge.payments.resolve(args["payment_id"], args.get("outcome"), actor=self.client.id,
                                            note=args.get("note"), details=details)

    def op_events_resume(self, message_id: str, args: dict[str, Any]) -> dict[str, Any]:
        after = args.get("after", 0)
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            raise BridgeError("bad_request", "'after' must be the last event seq you received (0 for all).")
        last = self.bridge.payments.last_seq()
        if after > last:
            raise BridgeError("bad_request", f"'after' {after} is after the last event the bridge has sent ({last}).")
        more = self._start_events(after)
        return {"resumed_after": after, "more_events": more}

    def op_events_ack(self, message_id: str, args: dict[str, Any]) -> dict[str, Any]:
        assert self.client is not None
        seq = self._checked_ack(args.get("seq"), "seq")
        self.bridge.payments.ack_soon(self.client.id, seq)
        return {"acked": seq}

    def _checked_ack(self, seq: Any, name: str) -> int:
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise BridgeError("bad_request", f"'{name}' must be the seq of the last event you handled.")
        last = self.bridge.payments.last_seq()
        if seq > last:
            # Acked ahead of what exists, the client would never be sent the events it has not seen yet.
            raise BridgeError("bad_request", f"'{name}' {seq} is after the last event the bridge has sent ({last}).")
        return seq

    def _carried_ack(self, args: dict[str, Any]) -> Optional[int]:
        """The ``ack`` a payment.start or payment.refund may carry (docs/protocol.md): the client's ``events.ack``
        of the events it handled, in the next command instead of a message of its own.  Checked before anything
        is done (a bad one refuses the command); recorded only if the command is taken."""
        if "ack" not in args:
            return None
        if not self._may("read"):
            raise BridgeError("forbidden", "This client may not acknowledge events (it needs the 'read' right).")
        return self._checked_ack(args["ack"], "ack")

    def _with_ack(self, ack: Optional[int], started: Deferred) -> Deferred:
        if ack is None:
            return started
        client_id = cast(ClientConfig, self.client).id

        def taken(result: Any) -> Any:
            self.bridge.payments.ack_soon(client_id, cast(int, ack))
            return result

        return started.addCallback(taken)

    def _may(self, right: str) -> bool:
        assert self.client is not None
        return right in self.client.rights or "admin" in self.client.rights

    def _check_owner(self, view: dict[str, Any]) -> None:
        assert self.client is not None
        owner = self.bridge.payments.owner(view["id"])
        if owner is not None and owner != self.client.id and "admin" not in self.client.rights:
            raise BridgeError("unknown_payment", "There is no such payment for this client.")


#: op -> (handler, right needed or None)
OPS: dict[str, tuple[Callable[[Session, str, dict[str, Any]], Any], Optional[str]]] = {
    "hello": (Session.op_hello, None),
    "bridge.info": (Session.op_bridge_info, "read"),
    "terminal.list": (Session.op_terminal_list, "read"),
    "terminal.status": (Session.op_terminal_status, "read"),
    "payment.start": (Session.op_payment_start, "pay"),
    "payment.get": (Session.op_payment_get, "read"),
    "payment.list": (Session.op_payment_list, "read"),
    "payment.cancel": (Session.op_payment_cancel, "pay"),
    "payment.refund": (Session.op_payment_refund, "refund"),
    "payment.resolve": (Session.op_payment_resolve, "resolve"),
    "events.resume": (Session.op_events_resume, "read"),
    "events.ack": (Session.op_events_ack, "read"),
}

#: op -> the arguments it takes; any other is refused (bad_request), so that a misspelt or unsupported option
#: (e.g. a tip) is never silently ignored.
OP_ARGS: dict[str, frozenset[str]] = {
    "hello": frozenset({"client"}),
    "bridge.info": frozenset(),
    "terminal.list": frozenset(),
    "terminal.status": frozenset({"terminal"}),
    "payment.start": frozenset({"terminal", "amount", "currency", "kind", "method", "ack"}),
    "payment.get": frozenset({"payment_id", "command_id"}),
    "payment.list": frozenset({"terminal", "state", "since", "until", "limit", "cursor"}),
    "payment.cancel": frozenset({"payment_id"}),
    "payment.refund": frozenset({"payment_id", "amount", "ack"}),
    "payment.resolve": frozenset({"payment_id", "outcome", "note", "authorisation"}),
    "events.resume": frozenset({"after"}),
    "events.ack": frozenset({"seq"}),
}


def _keys_before_seq(body: dict[str, Any]) -> bool:
    """True if every key of ``body`` sorts before "seq" (code point order, as canonical JSON sorts them)."""
    return all(key < "seq" for key in body)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _parse(text: str) -> tuple[Any, Optional[str]]:
    """The message's JSON value and None, or None and why it is not a message (``bad_json``)."""
    try:
        message = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        return None, f"The message is nested more than {MAX_DEPTH} levels deep."
    except ValueError:  # also an integer of more than 4300 digits
        return None, "The message is not valid JSON."
    if ("\\ud" in text or "\\uD" in text) and _has_lone_surrogate(message):
        return None, "The message holds an escaped lone surrogate (\\ud800-\\udfff), which is not text."
    if text.count("[") + text.count("{") > MAX_DEPTH and _depth(message) > MAX_DEPTH:
        return None, f"The message is nested more than {MAX_DEPTH} levels deep."
    return message, None


def _has_lone_surrogate(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _depth(value: Any) -> int:
    """How deeply ``value``'s arrays and objects nest (without recursion)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        items: Iterable[Any]
        if isinstance(item, dict):
            items = item.values()
        elif isinstance(item, list):
            items = item
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((child, depth + 1) for child in items if isinstance(child, (dict, list)))
    return deepest
