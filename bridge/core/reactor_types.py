"""What the bridge uses of Twisted's reactor, named as typing Protocols (for mypy; nothing here runs).

Twisted's reactor interfaces (``IReactorTime``, ``IDelayedCall``, ``IReactorTCP``...) are zope interfaces: their
methods are declared without ``self``, and mypy, without the mypy-zope plugin (neither stack has it: Debian
bookworm does not ship it), reports every call through a value typed with one of them as wrong.  So a parameter
that takes the reactor is typed with the Protocol below that says what its code uses of it; the reactor and
Twisted's ``task.Clock`` match them as they are, nothing to declare.  Where such a value goes on to one of
Twisted's own typed functions (``deferLater``, ``Deferred.addTimeout``, ``deferToThreadPool``), it is cast to the
interface that function asks for, which the reactor provides.

Each Protocol stands for one of Twisted's interfaces and names only the methods the bridge (or the Twisted code it
hands the reactor to) calls; :class:`Reactor` is all the reactor's, for the daemon that hands the reactor down.
A connection's transport (and its socket) and a client endpoint, zope interfaces too, are named here for the same
reason.
"""

from __future__ import annotations

import socket
from typing import Any, Callable, Protocol

from twisted.internet.defer import Deferred


class DelayedCall(Protocol):
    """A call scheduled with :meth:`Clock.callLater` (``IDelayedCall``)."""

    def getTime(self) -> float: ...
    def reset(self, secondsFromNow: float) -> None: ...
    def active(self) -> bool: ...
    def cancel(self) -> None: ...


class Clock(Protocol):
    """The time and the scheduling of calls (``IReactorTime``): the reactor, or ``task.Clock`` in tests."""

    def seconds(self) -> float: ...
    def callLater(self, delay: float, callable: Callable[..., Any], *args: Any, **kw: Any) -> DelayedCall: ...


class ThreadedClock(Clock, Protocol):
    """A clock that also takes calls from other threads (``IReactorFromThreads``): a thread pool's results and the
    journal's writer thread come back to the reactor thread through it."""

    def callFromThread(self, callable: Callable[..., Any], *args: Any, **kw: Any) -> None: ...


class TCPClock(Clock, Protocol):
    """A clock that also opens TCP connections (``IReactorTCP``), as Twisted's client endpoints do with it."""

    def connectTCP(self, host: str, port: int, factory: Any, timeout: float = 30,
                   bindAddress: Any = None) -> Any: ...


class FDClock(Clock, Protocol):
    """A clock that also watches file descriptors (``IReactorFDSet``), as a serial port or a pseudo-terminal's
    file descriptor asks of it."""

    def addReader(self, reader: Any) -> None: ...
    def addWriter(self, writer: Any) -> None: ...
    def removeReader(self, reader: Any) -> None: ...
    def removeWriter(self, writer: Any) -> None: ...


class Listener(Protocol):
    """Listens for connections, plain or under TLS (``IReactorTCP``, ``IReactorSSL``), as Twisted's server endpoints
    ask of it."""

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any: ...
    def listenSSL(self, port: int, factory: Any, contextFactory: Any, backlog: int = 50,
                  interface: str = "") -> Any: ...


class Transport(Protocol):
    """A connection's transport (``ITransport``), as ``Protocol.transport`` holds it once connected (Twisted types
    that attribute as an optional ``ITransport``)."""

    def write(self, data: bytes) -> None: ...
    def loseConnection(self) -> None: ...


class SystemHandle(Protocol):
    """A transport's socket (``ISystemHandle``), as Twisted's TCP connection has it."""

    def getHandle(self) -> socket.socket: ...


class ClientEndpoint(Protocol):
    """Where to connect to (``IStreamClientEndpoint``): fires with the connected protocol."""

    def connect(self, protocolFactory: Any) -> Deferred[Any]: ...


class Reactor(ThreadedClock, TCPClock, FDClock, Listener, Protocol):
    """The reactor as the daemon hands it down to the journal, the drivers, the uplinks and the status page, and
    listens with it: all of the above.  (Running and stopping it is left to the commands that do, through
    ``bridge.service.reactor``.)"""
