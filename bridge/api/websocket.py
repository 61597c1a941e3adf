"""The LAN listener: an autobahn WebSocket server (over TLS) that hands each text message to a Session."""

from __future__ import annotations

import itertools
import json
import typing
from typing import Any, Optional, cast

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from OpenSSL import SSL
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import ConnectionLost
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from bridge.api.admission import HELLO_DEADLINE, Admission
from bridge.api.session import SUBPROTOCOL, Bridge, Session
from bridge.errors import BridgeError

#: Close code for "message too large".  RFC 6455's 1009 is reserved to the WebSocket layer itself; an
#: application may only send 1000 or 3000-4999, so the bridge uses 4009 (docs/protocol.md).
CLOSE_TOO_BIG = 4009
#: The close code at shutdown: 1000 (autobahn lets an application send only 1000 or 3000-4999, not 1001).
CLOSE_STOPPING = 1000
#: Seconds the closing handshakes may take at shutdown before the connections are dropped.
CLOSE_ALL_TIMEOUT = 5.0


class _TCPTransport(typing.Protocol):
    """What is used of a connection's transport (TCP, under TLS): Twisted types ``Protocol.transport`` as
    an optional ITransport, and its ITCPTransport is a zope interface that mypy cannot call through without
    the mypy-zope plugin (pyproject.toml's mypy section)."""

    def setTcpNoDelay(self, enabled: bool) -> None: ...
    def abortConnection(self) -> None: ...


def _tcp(protocol: Protocol) -> _TCPTransport:
    """``protocol``'s transport, once connected."""
    return cast(_TCPTransport, protocol.transport)


def _tls_error_text(error: BaseException) -> str:
    """OpenSSL's words for a TLS failure, e.g. "tlsv1 alert unknown ca"."""
    try:
        return "; ".join(str(entry[2]) for entry in error.args[0]) or str(error)
    except (IndexError, TypeError):
        return str(error)


class CommandProtocol(WebSocketServerProtocol):
    # No ``log`` attribute here: it would replace autobahn's txaio logger, whose calls below the configured level
    # are no-ops, with a Logger whose calls all build an event to be filtered out (a few per message).
    factory: "CommandFactory"
    #: Set by the factory: the peer's address and this connection's admission token.
    address = ""
    token = 0
    _deadline: Any = None

    def connectionMade(self) -> None:
        # autobahn's tcpNoDelay option is read before it is copied from the factory, and the error is
        # swallowed: without this, Nagle holds a message written right after another until the peer's
        # delayed ACK, about 40 ms on Linux (docs/performance.md).
        _tcp(self).setTcpNoDelay(True)
        # From the TCP connection on: TLS, the WebSocket handshake and hello must all fit in the deadline.
        self._deadline = self.factory.bridge.clock.callLater(HELLO_DEADLINE, self._hello_overdue)
        self.closed: Deferred = Deferred()
        self.factory.connections.add(self)
        super().connectionMade()

    def connectionLost(self, reason: Any = None) -> None:
        self._cancel_deadline()
        self.factory.admission.gone(self.address, self.token)
        self.factory.connections.discard(self)
        if hasattr(self, "closed") and not self.closed.called:
            self.closed.callback(None)
        if reason is not None and reason.check(SSL.Error):
            # autobahn would log "SSL error: tlsv1 alert unknown ca (in )", without saying who: say it here,
            # with the peer's address (once per episode: see Admission), and hand autobahn a plain lost connection
            error = _tls_error_text(reason.value)
            hint = ("; a client that rejects the bridge's certificate pins another fingerprint: compare it with "
                    "the bridge's (terminal-bridge doctor)") if "unknown ca" in error or "certificate" in error else ""
            self.factory.admission.offence(self.address, "tls", error + hint)
            reason = Failure(ConnectionLost("TLS failed"))
        super().connectionLost(reason)
        # autobahn leaves its closing-handshake timer running when the peer hangs up first (a close sent at
        # shutdown crossing the peer's own): cancel it, nothing is left to time
        call = getattr(self, "closeHandshakeTimeoutCall", None)
        if call is not None:
            self.closeHandshakeTimeoutCall = None
            call.cancel()

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _hello_overdue(self) -> None:
        self._deadline = None
        self.factory.admission.hello_overdue(self.address)
        self.drop()

    def drop(self) -> None:
        """Close the connection at once, without a closing handshake (it never logged in)."""
        _tcp(self).abortConnection()

    def _logged_in(self) -> None:
        self._cancel_deadline()
        self.factory.admission.authenticated(self.address, self.token)

    def onConnect(self, request: Any) -> str:
        if SUBPROTOCOL not in request.protocols:
            raise ConnectionDeny(ConnectionDeny.BAD_REQUEST,
                                 f"offer the WebSocket subprotocol {SUBPROTOCOL}")
        self.session = Session(self.factory.bridge, self._send_json, peer=request.peer,
                               send_bytes=self._send_text, on_hello=self._logged_in,
                               on_bad_signature=lambda client: self.factory.admission.offence(
                                   self.address, "bad_signature", f"client {client}"))
        return SUBPROTOCOL

    def sendHttpErrorResponse(self, code: int, reason: str, responseHeaders: Any = None) -> None:
        # A plain HTTP request (no WebSocket upgrade) gets a bare 404: there is no page here, and no banner.
        if code == 426:
            self.sendData(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        super().sendHttpErrorResponse(code, reason, responseHeaders)

    def _send_json(self, message: dict[str, Any]) -> None:
        self._send_text(json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))

    def _send_text(self, payload: bytes) -> None:
        # A reply can be ready after the peer went away (e.g. an ack being journaled): drop it quietly.
        if self.state == self.STATE_OPEN:
            self.sendMessage(payload)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if len(payload) > self.factory.bridge.config.max_message_bytes:
            self.session.oversize()
            self.sendClose(CLOSE_TOO_BIG, "message too large")
            return
        if isBinary:
            self.session.refuse(BridgeError("bad_message", "Messages are JSON text, not binary frames."))
            return
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            self.session.refuse(BridgeError("bad_json", "The message is not valid UTF-8 text."))
            return
        self.session.message_received(text)

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        session = getattr(self, "session", None)
        if session is not None:
            session.connection_lost()


class _Refused(Protocol):
    """What a connection over its address's share gets: closed as soon as it is made, before TLS."""

    def connectionMade(self) -> None:
        _tcp(self).abortConnection()


class CommandFactory(WebSocketServerFactory):
    # Twisted >= 25 types Factory.protocol with a type parameter that autobahn's factories leave at its default
    protocol = CommandProtocol  # type: ignore[assignment]

    def __init__(self, bridge: Bridge, url: str) -> None:
        # server=None: no "Server: AutobahnPython/..." banner in the handshake's answer
        super().__init__(url, protocols=[SUBPROTOCOL], server=None)
        self.bridge = bridge
        self.admission = Admission(bridge.config.max_connections, bridge.clock)
        self._tokens = itertools.count(1)
        #: Every connection made and not lost yet (for closing them at shutdown).
        self.connections: set[CommandProtocol] = set()
        bridge.closers.append(self.close_all)
        limit = bridge.config.max_message_bytes
        # autobahn's own cap drops the connection without a word; ours (in onMessage) answers with
        # message_too_large first.  So autobahn's is set above ours, as the hard backstop.
        self.setProtocolOptions(
            maxMessagePayloadSize=4 * limit,
            maxFramePayloadSize=4 * limit,
            maxConnections=bridge.config.max_connections,
            openHandshakeTimeout=5,
            # a plain GET gets 404 (sendHttpErrorResponse above), not autobahn's status page
            webStatus=False,
            closeHandshakeTimeout=2,
            autoPingInterval=30,
            autoPingTimeout=60,
            perMessageCompressionAccept=lambda offers: None,
            # onMessage decodes the text itself and answers bad_json; autobahn's check would instead close the
            # connection (1007) and spend a UTF-8 scan on every frame
            utf8validateIncoming=False,
        )

    def stopFactory(self) -> None:
        # the listener stopped (the bridge is stopping): no offender summary is left waiting
        self.admission.stop()
        super().stopFactory()

    def buildProtocol(self, addr: Any) -> Optional[Protocol]:
        address = getattr(addr, "host", None) or str(addr)
        protocol = cast(CommandProtocol, super().buildProtocol(addr))  # an instance of self.protocol
        protocol.address = address
        protocol.token = next(self._tokens)
        if not self.admission.admit(address, protocol.token, protocol.drop):
            refused = _Refused()
            refused.factory = self
            return refused
        return protocol

    def close_all(self, timeout: float = CLOSE_ALL_TIMEOUT) -> Deferred:
        """Close every connection (at shutdown, once the payments in flight have ended): a closing handshake
        after what was already sent (the last events reach the tills), then an abort for any still open after
        ``timeout`` seconds.  Fires when all are gone."""
        connections = list(self.connections)
        for connection in connections:
            if connection.state == connection.STATE_OPEN:
                connection.sendClose(CLOSE_STOPPING, "the bridge is stopping")
            else:
                connection.drop()
        done = DeferredList([c.closed for c in connections])
        clock = self.bridge.clock

        def drop_late() -> None:
            for connection in list(self.connections):
                connection.drop()

        late = clock.callLater(timeout, drop_late)
        return done.addBoth(lambda _: late.cancel() if late.active() else None)
