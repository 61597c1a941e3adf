"""The LAN listener: an autobahn WebSocket server (over TLS) that hands each text message to a Session."""

from __future__ import annotations

import json
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny

from bridge.api.session import SUBPROTOCOL, Bridge, Session
from bridge.errors import BridgeError

#: Close code for "message too large".  RFC 6455's 1009 is reserved to the WebSocket layer itself; an
#: application may only send 1000 or 3000-4999, so the bridge uses 4009 (docs/protocol.md).
CLOSE_TOO_BIG = 4009


class CommandProtocol(WebSocketServerProtocol):
    # No ``log`` attribute here: it would replace autobahn's txaio logger, whose calls below the configured level
    # are no-ops, with a Logger whose calls all build an event to be filtered out (a few per message).
    factory: "CommandFactory"

    def connectionMade(self) -> None:
        # autobahn's tcpNoDelay option is read before it is copied from the factory, and the error is
        # swallowed: without this, Nagle holds a message written right after another until the peer's
        # delayed ACK, about 40 ms on Linux (docs/performance.md).
        self.transport.setTcpNoDelay(True)
        super().connectionMade()

    def onConnect(self, request: Any) -> str:
        if SUBPROTOCOL not in request.protocols:
            raise ConnectionDeny(ConnectionDeny.BAD_REQUEST,
                                 f"offer the WebSocket subprotocol {SUBPROTOCOL}")
        self.session = Session(self.factory.bridge, self._send_json, peer=request.peer,
                               send_bytes=self._send_text)
        return SUBPROTOCOL

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


class CommandFactory(WebSocketServerFactory):
    protocol = CommandProtocol

    def __init__(self, bridge: Bridge, url: str) -> None:
        super().__init__(url, protocols=[SUBPROTOCOL])
        self.bridge = bridge
        limit = bridge.config.max_message_bytes
        # autobahn's own cap drops the connection without a word; ours (in onMessage) answers with
        # message_too_large first.  So autobahn's is set above ours, as the hard backstop.
        self.setProtocolOptions(
            maxMessagePayloadSize=4 * limit,
            maxFramePayloadSize=4 * limit,
            maxConnections=bridge.config.max_connections,
            openHandshakeTimeout=5,
            closeHandshakeTimeout=2,
            autoPingInterval=30,
            autoPingTimeout=60,
            perMessageCompressionAccept=lambda offers: None,
            # onMessage decodes the text itself and answers bad_json; autobahn's check would instead close the
            # connection (1007) and spend a UTF-8 scan on every frame
            utf8validateIncoming=False,
        )
