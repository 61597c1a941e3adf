"""The floor of the added latency: a bare autobahn TLS WebSocket echo server (run in the simulators' process) and
its client (in the measuring process).  What a round trip costs on this machine before the bridge does anything;
the report adds the journal's 3 fsyncs (machine.py) to it."""

from __future__ import annotations

import os
import time
from typing import Any, Optional


def listen_echo(reactor: Any, directory: str):
    """The floor of the added latency: a bare autobahn WebSocket over TLS, with the bridge's TLS settings,
    WebSocket options and listening socket (bridge/api/listening.py: each write sent at once), that sends every
    message back and does nothing else (no JSON, no signature, no journal).  Fires with its port."""
    from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
    from twisted.internet.defer import succeed

    from bridge.api.listening import listen_tls
    from bridge.api.tls import ensure_certificate, server_options

    cert, key = os.path.join(directory, "echo.crt"), os.path.join(directory, "echo.key")
    ensure_certificate(cert, key, "localhost")

    class Echo(WebSocketServerProtocol):
        def connectionMade(self) -> None:
            self.transport.setTcpNoDelay(True)  # as the bridge does (docs/performance.md: Nagle)
            super().connectionMade()

        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            self.sendMessage(payload, isBinary)

    factory = WebSocketServerFactory()
    factory.protocol = Echo
    factory.setProtocolOptions(utf8validateIncoming=False, perMessageCompressionAccept=lambda offers: None)
    port = listen_tls(reactor, 0, factory, server_options(cert, key), interface="127.0.0.1")
    return succeed(port.getHost().port)


def echo_client(reactor: Any, port: int):
    """Open a WebSocket over TLS to the echo server; fires with a function sending one message and firing with
    the seconds until it came back."""
    from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
    from twisted.internet.defer import Deferred
    from twisted.internet.endpoints import SSL4ClientEndpoint
    from twisted.internet.ssl import CertificateOptions

    opened: Deferred = Deferred()

    class Client(WebSocketClientProtocol):
        waiting: Optional[tuple[float, Deferred]] = None

        def connectionMade(self) -> None:
            self.transport.setTcpNoDelay(True)
            super().connectionMade()

        def onOpen(self) -> None:
            opened.callback(self)

        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            assert self.waiting is not None
            (t0, d), self.waiting = self.waiting, None
            d.callback(time.perf_counter() - t0)

        def echo(self, message: bytes) -> Deferred:
            d: Deferred = Deferred()
            self.waiting = (time.perf_counter(), d)
            self.sendMessage(message)
            return d

    factory = WebSocketClientFactory(f"wss://127.0.0.1:{port}")
    factory.protocol = Client
    factory.setProtocolOptions(perMessageCompressionOffers=[])
    endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", port, CertificateOptions(verify=False), timeout=10)
    endpoint.connect(factory).addErrback(lambda f: opened.errback(f) if not opened.called else None)
    return opened
