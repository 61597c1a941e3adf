"""A fake cloud Odoo for the uplink's tests: the bus WebSocket as protocols/odoo-bus.md describes it, plus the
terminal bridge module's routes as docs/cloud-protocol.md defines them.

Faithful where the bridge could go wrong: Origin required on the WebSocket (400 without), a socket needs a
db-bound session cookie from ``/web/login?db=`` (404 without: a multi-database host), one subscribe frame with
``last``, notification batches as JSON lists, replay by last id within the retention window (or the last 50 s for
``last = 0``), server pings, the rate limit (10 frames per 2 s, PING/PONG included, then 1013), the close codes
(4001, 4002, 1001, 1013, 1000 OUTDATED_VERSION for a browser User-Agent), out-of-order and lost notifications.
Routes verify the bridge's signatures (commands served freshly signed, acks, feedback with SHA-OUT), and each can
be made to fail (HTTP 500s, hanging answers).
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Optional
from urllib.parse import parse_qsl

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from bridge.api import signing
from bridge.api.tls import server_options
from bridge.uplink.feedback import FEEDBACK_KEYS

VERSION = "18.0-7"  # what Odoo's own browser worker would send as ?version=
RETENTION = 100.0  # bus_bus rows older than this are garbage collected
LAST_ZERO_WINDOW = 50.0  # last=0 replays this much
RATE_BURST, RATE_DELAY = 10, 0.2
PAIR_ALPHABET = "ABCDEFGHJKMNPQRSTVWXYZ23456789"
PAIR_TTL = 600.0
PAIR_WRONG_PER_MINUTE = 10


@dataclass
class Notification:
    id: int
    channel: str
    type: str
    payload: Any
    created: float
    visible: bool = True


@dataclass
class Command:
    id: str
    op: str
    args: dict
    acked: bool = False
    replies: list = field(default_factory=list)


class FakeOdoo:
    def __init__(self, reactor: Any, database: str, channel: str, client_id: str, secret_in: str, secret_out: str,
                 feedback_secret: str, feedback_hash: str = "sha512", algorithm: str = "sha256") -> None:
        self.reactor = reactor
        self.database = database
        self.channel = channel
        self.client_id = client_id
        self.secret_in = secret_in
        self.secret_out = secret_out
        self.algorithm = algorithm
        self.feedback_secret = feedback_secret
        self.feedback_hash = feedback_hash
        # state
        self.sessions: set[str] = set()
        self.logins = 0
        self.handshakes: list[dict[str, Any]] = []  # every WebSocket upgrade request: headers, outcome
        self.sockets: list[BusServerProtocol] = []
        self.subscriptions: list[dict[str, Any]] = []
        self.notifications: list[Notification] = []
        self._next_id = 1
        self.commands: "OrderedDict[str, Command]" = OrderedDict()
        self.pending_requests = 0
        self.acks: list[dict[str, Any]] = []
        self.feedback: list[dict[str, str]] = []
        self.feedback_rejected: list[dict[str, str]] = []
        self.feedback_attempts = 0
        self.unknown_acks: list[dict[str, Any]] = []  # acks of commands Odoo never queued (answered 200)
        self.no_database_requests: list[str] = []  # paths answered 404 for want of a session
        self._nonces: set[str] = set()
        # knobs
        self.multi_db = True  # a host of several databases: routes answer 404 without a db-bound session
        self.websocket_prefork = False  # /websocket reaches a prefork HTTP worker: "HTTP/1.0 500"
        self.websocket_down = False  # the bus answers 503 (a proxy without a route to the gevent port)
        self.ping_interval = 45.0  # Odoo's INACTIVITY_TIMEOUT: a PING after this much silence
        self.pong_timeout = 15.0  # ... and TCP dropped without a close frame if no PONG follows
        self.pending_status: Optional[int] = None  # answer /pending with this status instead
        self.pending_hang = False
        self.pending_padding = 0  # add this many bytes to /pending's answer (an oversized answer)
        self.feedback_failures = 0  # answer this many feedback posts with HTTP 500
        self.feedback_hang = False
        self.ack_hold = False  # record acks at once but answer them only at release_acks()
        self._held_acks: list[Any] = []
        self.arrivals: list[str] = []  # "ack" and "feedback" in the order their requests arrived
        self.sign_commands_with: Optional[str] = None  # a wrong secret: forged commands
        self.command_age = 0.0  # sign commands this many seconds in the past: stale commands
        self.clock_skew = 120.0
        self._hanging: list[Any] = []
        # pairing (docs/cloud-protocol.md, "Pairing"): one bridge record, its current code's SHA-256
        self.pair_code: Optional[dict[str, Any]] = None  # {"digest", "expires", "used"}
        self.pair_requests: list[dict[str, Any]] = []  # every POST /terminal_bridge/pair: body, outcome
        self.pair_wrong: list[float] = []  # times of wrong codes (the rate limit's window)
        self.bridge_record = "Shop Lyon"
        self.rights = ["pay", "read"]

    # -- serving --------------------------------------------------------------------------------

    def site(self) -> Site:
        root = Resource()
        web = Resource()
        root.putChild(b"web", web)
        web.putChild(b"login", _Login(self))
        factory = BusServerFactory(self)
        root.putChild(b"websocket", _MaybeDown(self, WebSocketResource(factory)))
        module = Resource()
        root.putChild(b"terminal_bridge", module)
        module.putChild(b"pending", _Pending(self))
        module.putChild(b"ack", _Ack(self))
        module.putChild(b"feedback", _Feedback(self))
        module.putChild(b"pair", _Pair(self))
        self.bus_factory = factory
        site = _TrackingSite(root)
        site.displayTracebacks = False
        self._site = site
        return site

    def listen(self, cert: str, key: str) -> Any:
        endpoint = SSL4ServerEndpoint(self.reactor, 0, server_options(cert, key), interface="127.0.0.1")
        d = endpoint.listen(self.site())
        d.addCallback(lambda port: setattr(self, "port", port) or port)
        return d

    def go_down(self) -> Any:
        """Odoo stops: no new connection is accepted, every open one (HTTP keep-alive, bus) is cut."""
        stopped = self.port.stopListening()
        for channel in list(self._site.channels):
            inner = getattr(channel, "_channel", channel)  # twisted wraps the HTTP channel for HTTP/2 choice
            transport = getattr(inner, "transport", None)
            if transport is not None:
                transport.abortConnection()
        self.drop_all()
        return stopped

    def stop(self) -> None:
        for request in self._hanging:
            if not request.finished and not request._disconnected:
                request.setResponseCode(503)
                request.finish()
        self._hanging = []
        for proto in list(self.sockets):
            proto.dropConnection(abort=True)

    def release_acks(self) -> None:
        """Answer the acks held back by ``ack_hold`` (200), and hold no more."""
        self.ack_hold = False
        held, self._held_acks = self._held_acks, []
        for request in held:
            if not request.finished and not request._disconnected:
                request.setResponseCode(200)
                request.setHeader(b"content-type", b"application/json")
                request.write(b'{"ok": true}')
                request.finish()

    @property
    def acks_held(self) -> int:
        return len(self._held_acks)

    def now(self) -> float:
        return self.reactor.seconds()

    # -- the bus ----------------------------------------------------------------------------------

    def notify(self, message_type: str, payload: Any, channel: Optional[str] = None, lost: bool = False,
               held: bool = False) -> int:
        """bus.bus._sendone: a row, then a dispatch to the subscribed sockets.  ``lost``: the id is used but the
        row is never seen (a late commit); ``held``: the row stays invisible until :meth:`release`."""
        notif_id = self._next_id
        self._next_id += 1
        if lost:
            return notif_id
        self.notifications.append(Notification(notif_id, channel or self.channel, message_type, payload,
                                               self.now(), visible=not held))
        if not held:
            for proto in list(self.sockets):
                self._poll(proto)
        return notif_id

    def release(self, notif_id: int) -> None:
        """A late commit becomes visible: sent at once, out of order (the 17.0+ hold-back window)."""
        for n in self.notifications:
            if n.id == notif_id:
                n.visible = True
                for proto in list(self.sockets):
                    if n.channel in proto.channels:
                        proto.send_batch([n])

    def gc(self) -> None:
        horizon = self.now() - RETENTION
        self.notifications = [n for n in self.notifications if n.created >= horizon]

    def subscribe(self, proto: "BusServerProtocol", data: Any) -> None:
        if not isinstance(data, dict):
            return
        channels = data.get("channels", [])
        if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
            return  # Odoo raises ValueError, logs it and keeps the socket
        last = data.get("last", 0)
        last = last if isinstance(last, int) else 0
        self.subscriptions.append(dict(data))
        proto.channels = set(channels) | {"broadcast"}
        if last > self._next_id - 1:
            last = 0
        if proto.last == 0:  # the client's value counts once per connection
            proto.last = last
            proto.since = self.now() - LAST_ZERO_WINDOW if last == 0 else None
        self._poll(proto)

    def _poll(self, proto: "BusServerProtocol") -> None:
        if not proto.channels:
            return
        rows = [n for n in self.notifications if n.visible and n.id > proto.last and n.channel in proto.channels
                and (proto.since is None or n.created >= proto.since)]
        if rows:
            proto.send_batch(rows)

    def close_all(self, code: int, reason: str = "") -> None:
        for proto in list(self.sockets):
            close_with(proto, code, reason)

    def drop_all(self) -> None:
        for proto in list(self.sockets):
            proto.dropConnection(abort=True)

    def expire_sessions(self) -> None:
        """The session files are gone (GC, restore): open sockets close 4001; old cookies lead nowhere."""
        self.sessions.clear()
        self.close_all(4001)

    # -- the terminal bridge module ----------------------------------------------------------------

    def queue_command(self, op: str, args: dict, command_id: Optional[str] = None, wake: bool = True) -> str:
        """Create the command row, then notify the channel last in the transaction."""
        command_id = command_id or "odoo-" + uuid.uuid4().hex[:12]
        self.commands[command_id] = Command(command_id, op, args)
        if wake:
            self.notify("terminal_bridge/command", {"command_id": command_id})
        return command_id

    def new_pairing_code(self, ttl: float = PAIR_TTL) -> str:
        """'Pair a bridge': a new one-time code (the previous one is void), as the administrator sees it."""
        code = "".join(secrets.choice(PAIR_ALPHABET) for _ in range(16))
        self.pair_code = {"digest": hashlib.sha256(code.encode()).hexdigest(), "expires": self.now() + ttl,
                          "used": False}
        return "-".join(code[i:i + 4] for i in range(0, 16, 4))

    def rotate_secrets(self) -> None:
        """What pairing the same bridge record again does: new secrets for the same client id and channel."""
        self.secret_in, self.secret_out = secrets.token_hex(32), secrets.token_hex(32)
        self.feedback_secret = secrets.token_hex(24)

    def pair(self, message: Any) -> tuple[int, dict[str, Any]]:
        """The /terminal_bridge/pair checks, in Odoo's order: rate limit, request, code, expiry, use."""
        now = self.now()
        self.pair_wrong = [t for t in self.pair_wrong if t > now - 60]
        if len(self.pair_wrong) >= PAIR_WRONG_PER_MINUTE:
            return 429, _error("too_many_attempts", "Too many wrong codes; wait a minute.")
        if not isinstance(message, dict) or not isinstance(message.get("code"), str) \
                or message.get("database") != self.database:
            return 400, _error("bad_request", "The pairing request is not understood.")
        code = message["code"].replace("-", "").replace(" ", "").upper()
        current = self.pair_code
        if current is None or not hmac.compare_digest(hashlib.sha256(code.encode()).hexdigest(),
                                                      current["digest"]):
            self.pair_wrong.append(now)
            return 403, _error("wrong_code", "No such pairing code.")
        if current["used"]:
            return 409, _error("used_code", "This code was already used.")
        if now > current["expires"]:
            return 410, _error("expired_code", "This code has expired.")
        current["used"] = True
        token = self.channel[len("terminal_bridge-"):]
        return 200, {"bridge": self.bridge_record, "database": self.database,
                     "client": {"name": "odoo-" + self.database, "id": self.client_id, "secret_in": self.secret_in,
                                "secret_out": self.secret_out, "algorithm": self.algorithm,
                                "rights": list(self.rights)},
                     "uplink": {"name": "odoo-" + self.database, "channel_token": token,
                                "feedback_secret": self.feedback_secret, "feedback_hash": self.feedback_hash}}

    def served_command(self, command: Command) -> dict[str, Any]:
        message = {"id": command.id, "op": command.op, "ts": int(self.now() - self.command_age),
                   "args": command.args}
        return signing.signed(message, self.sign_commands_with or self.secret_in, self.algorithm)

    def check_request(self, body: bytes) -> Optional[dict[str, Any]]:
        try:
            message = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return None
        if not isinstance(message, dict) or message.get("client") != self.client_id:
            return None
        if message.get("database") != self.database:
            return None
        if not signing.verify(message, self.secret_out, self.algorithm):
            return None
        ts = message.get("ts")
        if not isinstance(ts, (int, float)) or abs(self.now() - ts) > self.clock_skew:
            return None
        nonce = message.get("nonce")
        if not isinstance(nonce, str) or nonce in self._nonces:
            return None
        self._nonces.add(nonce)
        return message

    def verify_feedback(self, params: dict[str, str]) -> bool:
        """SHA-OUT as Ogone computes it, written out here independently of the bridge's code."""
        received = params.get("SHASIGN", "")
        if params.get("TBCLIENT") != self.client_id:
            return False  # Odoo picks the passphrase by TBCLIENT: no such bridge client, nothing to check with
        pairs = sorted((k.upper(), v) for k, v in params.items() if k.upper() != "SHASIGN")
        text = "".join(f"{k}={v}{self.feedback_secret}" for k, v in pairs if v and k in FEEDBACK_KEYS)
        expected = hashlib.new(self.feedback_hash, text.encode("utf-8")).hexdigest().upper()
        return hmac.compare_digest(received, expected)

    def feedback_for(self, payid: str) -> list[dict[str, str]]:
        return [f for f in self.feedback if f["PAYID"] == payid]


# -- the WebSocket ---------------------------------------------------------------------------------------


class BusServerProtocol(WebSocketServerProtocol):
    factory: "BusServerFactory"

    def onConnect(self, request: Any) -> None:
        odoo = self.factory.odoo
        headers = request.headers
        record = {"headers": dict(headers), "params": dict(request.params), "outcome": None}
        odoo.handshakes.append(record)
        missing = [h for h in ("origin",) if not headers.get(h)]
        if missing:
            record["outcome"] = 400
            raise ConnectionDeny(400, "Empty or missing header(s): " + ", ".join(missing))
        cookie = _cookie(headers.get("cookie", ""), "session_id")
        if cookie not in odoo.sessions:
            record["outcome"] = 404  # no database for this session on a multi-db host
            raise ConnectionDeny(404, "Not Found")
        record["outcome"] = 101
        self.cookie = cookie
        self.user_agent = headers.get("user-agent", "")
        self.version = (request.params.get("version") or [None])[0]
        self.channels: set[str] = set()
        self.last = 0
        self.since: Optional[float] = None
        self._tokens = float(RATE_BURST)
        self._stamp = odoo.now()

    def onOpen(self) -> None:
        odoo = self.factory.odoo
        odoo.sockets.append(self)
        self._awaiting_pong: Any = None
        self._inactivity = odoo.reactor.callLater(odoo.ping_interval, self._ping)
        if self.user_agent.startswith("Mozilla/") and self.version != VERSION:
            close_with(self, 1000, "OUTDATED_VERSION")

    def _ping(self) -> None:
        odoo = self.factory.odoo
        self.sendPing()
        self._awaiting_pong = odoo.reactor.callLater(odoo.pong_timeout, self.dropConnection, True)

    def _traffic(self) -> None:
        if self._inactivity.active():
            self._inactivity.reset(self.factory.odoo.ping_interval)
        else:
            self._inactivity = self.factory.odoo.reactor.callLater(self.factory.odoo.ping_interval, self._ping)

    def _limit_rate(self) -> bool:
        self._traffic()
        now = self.factory.odoo.now()
        self._tokens = min(float(RATE_BURST), self._tokens + (now - self._stamp) / RATE_DELAY)
        self._stamp = now
        if self._tokens < 1:
            close_with(self, 1013)
            return False
        self._tokens -= 1
        return True

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if not self._limit_rate() or isBinary:
            return
        try:
            message = json.loads(payload.decode("utf-8"))
            event_name = message["event_name"]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            return  # logged by Odoo; the socket stays open
        if event_name == "subscribe":
            self.factory.odoo.subscribe(self, message.get("data"))

    def onPing(self, payload: bytes) -> None:
        if self._limit_rate():
            super().onPing(payload)

    def onPong(self, payload: bytes) -> None:
        if self._awaiting_pong is not None and self._awaiting_pong.active():
            self._awaiting_pong.cancel()
        self._limit_rate()

    def send_batch(self, rows: list[Notification]) -> None:
        if self.state != self.STATE_OPEN:
            return  # closing: Odoo drops it too; the bridge fetches after it reconnects
        batch = [{"id": n.id, "message": {"type": n.type, "payload": n.payload}} for n in rows]
        self.last = max([self.last] + [n.id for n in rows])
        self.sendMessage(json.dumps(batch).encode("utf-8"))

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        odoo = self.factory.odoo
        if self in odoo.sockets:
            odoo.sockets.remove(self)
        for call in (getattr(self, "_inactivity", None), getattr(self, "_awaiting_pong", None)):
            if call is not None and call.active():
                call.cancel()


class BusServerFactory(WebSocketServerFactory):
    protocol = BusServerProtocol

    def __init__(self, odoo: FakeOdoo) -> None:
        super().__init__("wss://127.0.0.1/websocket", reactor=odoo.reactor)
        self.odoo = odoo
        self.setProtocolOptions(maxMessagePayloadSize=1 << 20, perMessageCompressionAccept=lambda offers: None)


class _TrackingSite(Site):
    """A Site that knows its open HTTP connections (to cut them when Odoo goes down)."""

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource)
        self.channels: set[Any] = set()

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        self.channels.add(channel)
        lost = channel.connectionLost

        def connection_lost(reason: Any) -> None:
            self.channels.discard(channel)
            lost(reason)

        channel.connectionLost = connection_lost
        return channel


class _MaybeDown(Resource):
    isLeaf = True

    def __init__(self, odoo: FakeOdoo, inner: Resource) -> None:
        super().__init__()
        self._odoo = odoo
        self._inner = inner

    def render(self, request: Any) -> Any:
        if self._odoo.websocket_prefork:
            # Odoo's prefork HTTP worker: it cannot upgrade, and answers with its werkzeug HTTP/1.0 status line.
            request.clientproto = b"HTTP/1.0"
            request.setResponseCode(500)
            return b"Couldn't bind the websocket. Is the connection opened on the evented port (8072)?"
        if self._odoo.websocket_down:
            request.setResponseCode(503)
            return b"Service Unavailable"
        return self._inner.render(request)


# -- routes ----------------------------------------------------------------------------------------------


class _Login(Resource):
    isLeaf = True

    def __init__(self, odoo: FakeOdoo) -> None:
        super().__init__()
        self._odoo = odoo

    def render_GET(self, request: Any) -> bytes:
        db = (request.args.get(b"db") or [b""])[0].decode()
        if db != self._odoo.database:
            request.setResponseCode(404)
            return b"database not found"
        self._odoo.logins += 1
        sid = secrets.token_hex(20)
        self._odoo.sessions.add(sid)
        request.addCookie(b"session_id", sid.encode(), path=b"/", httpOnly=True)
        request.setResponseCode(303)
        request.setHeader(b"location", b"/odoo")
        return b""


class _Route(Resource):
    isLeaf = True

    def __init__(self, odoo: FakeOdoo) -> None:
        super().__init__()
        self._odoo = odoo

    def hang(self, request: Any) -> Any:
        self._odoo._hanging.append(request)
        return NOT_DONE_YET

    def no_database(self, request: Any) -> bool:
        """On a multi-database host, a request without a session bound to the database finds no route: 404."""
        cookie = _cookie((request.getHeader(b"cookie") or b"").decode("latin-1"), "session_id")
        if self._odoo.multi_db and cookie not in self._odoo.sessions:
            self._odoo.no_database_requests.append(request.path.decode())
            request.setResponseCode(404)
            return True
        return False

    def json(self, request: Any, data: Any, code: int = 200) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(data).encode("utf-8")


class _Pending(_Route):
    def render_POST(self, request: Any) -> Any:
        odoo = self._odoo
        odoo.pending_requests += 1
        if self.no_database(request):
            return b"Not Found"
        if odoo.pending_hang:
            return self.hang(request)
        if odoo.pending_status is not None:
            return self.json(request, {"error": "failing on purpose"}, odoo.pending_status)
        if odoo.check_request(request.content.read()) is None:
            return self.json(request, {"error": "bad signature"}, 403)
        commands = [odoo.served_command(c) for c in odoo.commands.values() if not c.acked]
        answer: dict[str, Any] = {"commands": commands}
        if odoo.pending_padding:
            answer["padding"] = "x" * odoo.pending_padding
        return self.json(request, answer)


class _Ack(_Route):
    def render_POST(self, request: Any) -> Any:
        odoo = self._odoo
        if self.no_database(request):
            return b"Not Found"
        message = odoo.check_request(request.content.read())
        if message is None:
            return self.json(request, {"error": "bad signature"}, 403)
        odoo.arrivals.append("ack")
        reply = message.get("reply") or {}
        entry = {"command_id": message.get("command_id"), "reply": reply,
                 "reply_signed": signing.verify(reply, odoo.secret_out, odoo.algorithm)}
        odoo.acks.append(entry)
        command = odoo.commands.get(message.get("command_id"))
        if command is None:
            odoo.unknown_acks.append(entry)  # Odoo logs it and answers 200: the bridge has nothing to redo
        else:
            command.acked = True
            command.replies.append(reply)
        if odoo.ack_hold:
            odoo._held_acks.append(request)
            return NOT_DONE_YET
        return self.json(request, {"ok": True})


class _Feedback(_Route):
    def render_POST(self, request: Any) -> Any:
        odoo = self._odoo
        odoo.feedback_attempts += 1
        if self.no_database(request):
            return b"Not Found"
        if odoo.feedback_hang:
            return self.hang(request)
        odoo.arrivals.append("feedback")
        body = request.content.read().decode("utf-8")
        params = dict(parse_qsl(body, keep_blank_values=True))
        if odoo.feedback_failures > 0:
            odoo.feedback_failures -= 1
            request.setResponseCode(500)
            return b"Internal Server Error"
        if not odoo.verify_feedback(params):
            odoo.feedback_rejected.append(params)
            request.setResponseCode(403)
            return b"bad SHASIGN"
        odoo.feedback.append(params)
        request.setResponseCode(200)
        return b"OK"


class _Pair(_Route):
    def render_POST(self, request: Any) -> Any:
        odoo = self._odoo
        record: dict[str, Any] = {"body": None, "outcome": None}
        odoo.pair_requests.append(record)
        cookie = _cookie((request.getHeader(b"cookie") or b"").decode("latin-1"), "session_id")
        if cookie not in odoo.sessions:
            record["outcome"] = 404  # no database for this request on a multi-database host
            request.setResponseCode(404)
            return b"Not Found"
        try:
            message = json.loads(request.content.read().decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            message = None
        record["body"] = message
        code, answer = odoo.pair(message)
        record["outcome"] = code
        return self.json(request, answer, code)


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def close_with(proto: WebSocketServerProtocol, code: int, reason: str = "") -> None:
    """Close as Odoo does, with codes autobahn's sendClose keeps for itself (1001, 1013...)."""
    if proto.state == proto.STATE_OPEN:
        proto.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8") if reason else None, isReply=False)


def _cookie(header: str, name: str) -> Optional[str]:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


# -- a private CA -----------------------------------------------------------------------------------------


def make_private_ca(directory: str, name: str = "ca") -> dict[str, str]:
    """A CA and a server certificate for 127.0.0.1/localhost signed by it: {ca, cert, key} file paths."""
    os.makedirs(directory, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Test CA {name}")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False),
                         critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "odoo.test")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    paths = {k: os.path.join(directory, f"{name}-{k}.pem") for k in ("ca", "cert", "key")}
    with open(paths["ca"], "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(paths["cert"], "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(paths["key"], "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return paths
