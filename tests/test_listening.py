"""The command port's connections send each write at once (bridge/api/listening.py).

Real sockets and real TLS on a private reactor: what the server writes must reach the peer while the reactor is
held in the very callback that wrote it, where Twisted's own listenSSL leaves it in a buffer until the reactor
turns again (the control, which shows the check can fail).
"""

from __future__ import annotations

import socket
import ssl
import threading
from typing import Any

import pytest
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory

from bridge.api.listening import SendAtOnce, listen_tls
from bridge.api.tls import ensure_certificate, server_options
from tests.support import run_in_own_reactor

#: How long the held reactor waits for the peer to have the reply: only ever reached when a test fails.
PATIENCE = 10.0


class _Reply(Protocol):
    """Answers b"ping" with b"pong", then holds the reactor until the peer says it has the reply (or ``wait``
    seconds pass), and notes whether it had."""

    def __init__(self, got_reply: threading.Event, wait: float, held: list[bool], lost: Any) -> None:
        self.got_reply, self.wait, self.held, self.lost = got_reply, wait, held, lost
        self.buffer = b""

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if self.buffer == b"ping":
            self.transport.write(b"pong")  # type: ignore[union-attr]
            self.held.append(self.got_reply.wait(self.wait))  # the reactor does not turn meanwhile


def _tls_client(port: int, got_reply: threading.Event, errors: list[BaseException]) -> None:
    """A blocking TLS client in a thread of its own: sends b"ping", reads b"pong", says so."""
    try:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", port), timeout=PATIENCE * 2) as raw:
            with context.wrap_socket(raw) as tls:
                tls.sendall(b"ping")
                received = b""
                while len(received) < 4:
                    chunk = tls.recv(4 - len(received))
                    if not chunk:
                        break
                    received += chunk
                if received == b"pong":
                    got_reply.set()
    except BaseException as e:  # reported by the test
        errors.append(e)


@pytest.mark.parametrize("send_at_once", [True, False], ids=["listen_tls", "control-listenSSL"])
def test_a_tls_reply_reaches_the_peer_before_the_reactor_turns_again(tmp_path, send_at_once):
    from twisted.internet.epollreactor import EPollReactor
    from twisted.internet.defer import Deferred

    reactor = EPollReactor()
    cert, key = str(tmp_path / "c.crt"), str(tmp_path / "c.key")
    ensure_certificate(cert, key, "localhost")
    got_reply, held, errors = threading.Event(), [], []
    lost: Deferred = Deferred()  # the client hangs up once it has the reply (or failed)
    # the control waits a moment only: its reply cannot leave while the reactor is held, however long
    factory = Factory.forProtocol(lambda: _Reply(got_reply, PATIENCE if send_at_once else 0.3, held, lost))
    ports: list[Any] = []

    def scenario() -> Deferred:
        if send_at_once:
            port = listen_tls(reactor, 0, factory, server_options(cert, key), interface="127.0.0.1")
        else:  # what reactor.listenSSL does, with this reactor as the clock of Twisted's joining of small writes
            try:
                tls = TLSMemoryBIOFactory(server_options(cert, key), False, factory, clock=reactor)  # 22.8 on
            except TypeError:
                tls = TLSMemoryBIOFactory(server_options(cert, key), False, factory)  # 22.4: no joining
            port = reactor.listenTCP(0, tls, interface="127.0.0.1")
        ports.append(port)
        threading.Thread(target=_tls_client, args=(port.getHost().port, got_reply, errors), daemon=True).start()
        return lost

    def cleanup() -> Any:
        return ports[0].stopListening() if ports else None

    run_in_own_reactor(reactor, scenario, cleanup, timeout=PATIENCE * 3)
    assert errors == []
    assert held == [send_at_once]
    assert got_reply.is_set()  # the control's reply came too, once the reactor turned


class _Writer(Protocol):
    def __init__(self, connected: Any) -> None:
        self.connected_d = connected

    def connectionMade(self) -> None:
        self.connected_d.callback(self)


def _plain_port(reactor: Any, transport_class: Any, connected: Any) -> Any:
    from twisted.internet import tcp

    class Port(tcp.Port):
        transport = transport_class

    port = Port(0, Factory.forProtocol(lambda: _Writer(connected)), 50, "127.0.0.1", reactor)
    port.startListening()
    return port


@pytest.mark.parametrize("transport_class, at_once", [(SendAtOnce, True), ("tcp.Server", False)],
                         ids=["SendAtOnce", "control-tcp.Server"])
def test_a_write_is_in_the_peers_socket_at_once_unless_something_waits_ahead(transport_class, at_once):
    """Over plain TCP: the first write is in the peer's socket before the reactor turns; so is the next one once
    the first has left; and a write while the connection is being closed goes through the buffer (it is sent
    and the connection closed by the reactor, as Twisted does)."""
    from twisted.internet import tcp
    from twisted.internet.defer import Deferred, inlineCallbacks
    from twisted.internet.epollreactor import EPollReactor
    from twisted.internet.task import deferLater

    transport_class = tcp.Server if transport_class == "tcp.Server" else transport_class
    reactor = EPollReactor()
    connected: Deferred = Deferred()
    port = _plain_port(reactor, transport_class, connected)
    peer = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=PATIENCE)

    def pending() -> bytes:
        # a blocking read in the reactor's thread: what it gets was sent before the reactor turned again.  The
        # control's wait is short: nothing can come while the reactor is held, however long it waits.
        peer.settimeout(PATIENCE if at_once else 0.2)
        try:
            return peer.recv(100)
        except socket.timeout:
            return b""

    def pending_now() -> bytes:
        peer.setblocking(False)
        try:
            return peer.recv(100)
        except BlockingIOError:
            return b""

    @inlineCallbacks
    def scenario() -> Any:
        server = yield connected
        server.transport.write(b"first")
        in_socket = [pending()]
        server.transport.write(b"second")
        in_socket.append(pending())
        yield deferLater(reactor, 0.01, lambda: None)  # the reactor turns: anything buffered leaves
        peer.settimeout(PATIENCE)
        in_socket.append(peer.recv(100) if not at_once else pending_now())
        server.transport.write(b"last")
        server.transport.loseConnection()
        server.transport.write(b"!")  # after loseConnection: buffered, sent before the connection closes
        yield deferLater(reactor, 0.01, lambda: None)
        peer.settimeout(PATIENCE)
        rest = b""
        while chunk := peer.recv(100):
            rest += chunk
        in_socket.append(rest)
        return in_socket

    def cleanup() -> Any:
        peer.close()
        return port.stopListening()

    in_socket = run_in_own_reactor(reactor, scenario, cleanup, timeout=PATIENCE * 3)
    if at_once:
        assert in_socket == [b"first", b"second", b"", b"last!"]
    else:
        assert in_socket == [b"", b"", b"firstsecond", b"last!"]


@pytest.mark.parametrize("transport_class", [SendAtOnce, "tcp.Server"], ids=["SendAtOnce", "control-tcp.Server"])
def test_nothing_written_after_an_abort_reaches_the_peer(transport_class):
    """abortConnection (a client over its share, or late with hello) drops the connection: a message written
    after it must not leave, whichever transport."""
    from twisted.internet import tcp
    from twisted.internet.defer import Deferred, inlineCallbacks
    from twisted.internet.epollreactor import EPollReactor
    from twisted.internet.task import deferLater

    transport_class = tcp.Server if transport_class == "tcp.Server" else transport_class
    reactor = EPollReactor()
    connected: Deferred = Deferred()
    port = _plain_port(reactor, transport_class, connected)
    peer = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=PATIENCE)

    @inlineCallbacks
    def scenario() -> Any:
        server = yield connected
        server.transport.abortConnection()
        server.transport.write(b"late")
        yield deferLater(reactor, 0.01, lambda: None)  # the abort completes
        received = b""
        try:
            while chunk := peer.recv(100):
                received += chunk
        except ConnectionResetError:
            pass
        return received

    def cleanup() -> Any:
        peer.close()
        return port.stopListening()

    assert run_in_own_reactor(reactor, scenario, cleanup, timeout=PATIENCE * 3) == b""


class _ShortSocket:
    """A socket that takes at most ``takes`` bytes of a send, or raises ``error``."""

    def __init__(self, takes: int = 1 << 20, error: BaseException | None = None) -> None:
        self.takes, self.error, self.sent = takes, error, b""

    def send(self, data: bytes) -> int:
        if self.error is not None:
            raise self.error
        self.sent += data[:self.takes]
        return min(len(data), self.takes)


@pytest.mark.parametrize("socket_options, in_socket, buffered", [
    ({"takes": 3}, b"CZ0", b"400300"),                                   # the rest waits for the reactor
    ({"takes": 0}, b"", b"CZ0400300"),
    ({"error": BlockingIOError(11, "would block")}, b"", b"CZ0400300"),
    ({"error": ConnectionResetError(104, "reset")}, b"", b"CZ0400300"),  # doWrite meets it and closes
])
def test_what_the_socket_does_not_take_is_buffered(socket_options, in_socket, buffered):
    from twisted.internet.testing import MemoryReactor

    connection = SendAtOnce.__new__(SendAtOnce)  # no real socket: only write's own decisions are under test
    connection.__dict__.update(connected=1, disconnecting=0, _aborting=False, _writeDisconnected=False, dataBuffer=b"", offset=0,
                               _tempDataBuffer=[], _tempDataLen=0, producer=None, reactor=MemoryReactor())
    connection.socket = _ShortSocket(**socket_options)  # type: ignore[assignment]
    writing: list[bool] = []
    connection.startWriting = lambda: writing.append(True)  # type: ignore[method-assign]
    connection.write(b"CZ0400300")
    assert connection.socket.sent == in_socket  # type: ignore[attr-defined]
    assert b"".join(connection._tempDataBuffer) == buffered
    assert writing == [True]
