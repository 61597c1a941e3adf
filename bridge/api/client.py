"""A client of the command channel: what `terminal-bridge pay`, the tests and the benchmark use.

It signs every command with the client's inbound secret and checks every reply and event against the outbound
secret; anything unsigned or wrongly signed is refused.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol, cast
from urllib.parse import urlsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger

from bridge.api import signing
from bridge.api.session import SUBPROTOCOL
from bridge.api.tls import PinnedCertificateCreator
from bridge.core.reactor_types import ClientEndpoint, TCPClock
from bridge.errors import BridgeError


@dataclass(frozen=True)
class Credentials:
    client_id: str
    secret_in: str
    secret_out: str
    algorithm: str = "sha256"

    @classmethod
    def from_file(cls, path: str) -> tuple["Credentials", dict[str, Any]]:
        """A credentials file as written by `client add --write-credentials`: JSON with the client's id,
        secrets and, optionally, the bridge's url and fingerprint (returned as the second value)."""
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        creds = cls(data["client_id"], data["secret_in"], data["secret_out"], data.get("algorithm", "sha256"))
        return creds, {k: data[k] for k in ("url", "fingerprint") if k in data}


class _TCPTransport(Protocol):
    """What is used of the connection's transport (TCP, under TLS): its ITCPTransport is a zope interface,
    which mypy cannot call through without the mypy-zope plugin (pyproject.toml's mypy section)."""

    def setTcpNoDelay(self, enabled: bool) -> None: ...


class ClientProtocol(WebSocketClientProtocol):
    _log = Logger()  # not ``log``, which is autobahn's own (see CommandProtocol)
    factory: "ClientFactory"

    def connectionMade(self) -> None:
        # autobahn's tcpNoDelay option is read before it is copied from the factory, and the error is
        # swallowed: without this, Nagle holds a message written right after another until the peer's
        # delayed ACK, about 40 ms on Linux (docs/performance.md).
        cast(_TCPTransport, self.transport).setTcpNoDelay(True)
        super().connectionMade()

    def onOpen(self) -> None:
        self._pending: dict[str, Deferred] = {}
        self.factory.opened.callback(self)

    def call(self, op: str, args: Optional[dict[str, Any]] = None, message_id: Optional[str] = None,
             ts: Optional[float] = None) -> Deferred:
        """Send a signed command; the Deferred fires with ``result`` or fails with a BridgeError."""
        message_id = message_id or uuid.uuid4().hex
        creds = self.factory.credentials
        message = {"id": message_id, "op": op, "ts": int(time.time() if ts is None else ts), "args": args or {}}
        self.send_raw(signing.signed(message, creds.secret_in, creds.algorithm))
        d: Deferred = Deferred()
        self._pending[message_id] = d
        return d

    def send_raw(self, message: Any) -> None:
        payload = message if isinstance(message, bytes) else json.dumps(message).encode("utf-8")
        self.sendMessage(payload)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        message = json.loads(payload.decode("utf-8"))
        creds = self.factory.credentials
        signed_ok = signing.verify(message, creds.secret_out, creds.algorithm)
        if "seq" in message:
            if not signed_ok:
                self._log.error("Dropped an event with a bad signature")
                return
            self.factory.on_event(message)
            return
        d = self._pending.pop(message.get("re"), None)
        if d is None:
            self.factory.on_unsolicited(message)
            return
        if not signed_ok and "sig" in message:
            d.errback(BridgeError("bad_signature", "The bridge's reply is not signed with the expected secret. "
                                                   "Check the client's outbound secret."))
        elif message.get("ok"):
            d.callback(message.get("result"))
        else:
            error = message.get("error") or {}
            d.errback(BridgeError(error.get("code", "error"), error.get("message", "")))

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        if not self.factory.opened.called:
            if "certificate verify failed" in str(reason):
                error = BridgeError("certificate_mismatch",
                                    "The bridge's certificate is not the expected one. Compare the fingerprint "
                                    "with the one `terminal-bridge doctor` shows on the bridge.")
            else:
                error = BridgeError("connection_failed", f"The bridge refused the connection: {reason or code}")
            self.factory.opened.errback(error)
        for d in getattr(self, "_pending", {}).values():
            d.errback(BridgeError("connection_lost", "The connection to the bridge was lost."))
        self._pending = {}
        self.factory.closed.callback(reason)


class ClientFactory(WebSocketClientFactory):
    # Twisted >= 25 types Factory.protocol with a type parameter that autobahn's factories leave at its default
    protocol = ClientProtocol  # type: ignore[assignment]

    def __init__(self, url: str, credentials: Credentials) -> None:
        super().__init__(url, protocols=[SUBPROTOCOL])
        self.credentials = credentials
        self.opened: Deferred = Deferred()
        self.closed: Deferred = Deferred()
        self.on_event: Callable[[dict[str, Any]], None] = lambda event: None
        self.on_unsolicited: Callable[[dict[str, Any]], None] = lambda message: None
        self.setProtocolOptions(openHandshakeTimeout=10, perMessageCompressionOffers=[])


def connect(reactor: TCPClock, url: str, credentials: Credentials, fingerprint: Optional[str] = None,
            cafile: Optional[str] = None, timeout: float = 10.0) -> "tuple[ClientFactory, Deferred]":
    """Open a TLS WebSocket to the bridge at ``url`` (wss://host:port).

    The server certificate is checked against ``fingerprint`` if given, else against ``cafile`` (with the
    host name), else against the system's CAs.  Returns the factory and a Deferred firing with the open
    protocol.
    """
    parts = urlsplit(url)
    if parts.scheme != "wss" or not parts.hostname:
        raise BridgeError("bad_url", "The bridge's address must look like wss://HOST:PORT.")
    host, port = parts.hostname, parts.port or 8443
    if fingerprint:
        creator: Any = PinnedCertificateCreator(fingerprint, host)
    elif cafile:
        with open(cafile, "rb") as f:
            creator = ssl.optionsForClientTLS(host, trustRoot=ssl.Certificate.loadPEM(f.read()))
    else:
        creator = ssl.optionsForClientTLS(host)
    factory = ClientFactory(url, credentials)
    # HostnameEndpoint is an IStreamClientEndpoint (@implementer, which mypy sees only with the mypy-zope plugin)
    endpoint = cast(ClientEndpoint, wrapClientTLS(creator, cast(IStreamClientEndpoint,
                                                           HostnameEndpoint(reactor, host, port, timeout=timeout))))
    connecting = endpoint.connect(factory)

    def failed(f):
        if not factory.opened.called:
            factory.opened.errback(f)

    connecting.addErrback(failed)
    return factory, factory.opened
