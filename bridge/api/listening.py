"""The command port: TLS over TCP, each message leaving as soon as it is written.

Twisted's TCP transport only buffers a ``write``: the bytes leave at the reactor's next turn, after all that the
current turn still does.  The bridge's turns go on after a message is made: a payment's final event is made as
soon as its state is on disk, and the same turn then tells the other listeners (metrics, the service's status),
writes the payment's log line and frees the terminal, while the client waits for that very event
(docs/performance.md).  Here a write goes to the socket at once when nothing waits ahead of it in the
transport's buffer; what the socket does not take, or an error, goes through the buffered write as before, which
meets the error again and closes the connection the usual way.  Newer Twisted releases (22.8 on) also hold a TLS
connection's small writes until the reactor's next turn, to join them; the plain TLS protocol (the only one of
bookworm's Twisted 22.4) encrypts each write at once instead.

The cost: a message is a system call of its own where a turn's messages to one client shared one (a payment's
two first events and the command's reply, or a page of replayed events).
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet import tcp
from twisted.internet.interfaces import IProtocolFactory
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol


class SendAtOnce(tcp.Server):
    """A server-side TCP connection whose ``write`` hands the bytes to the socket at once when nothing is
    buffered ahead of them."""

    def write(self, data: bytes) -> None:
        # The buffer's state is read from FileDescriptor's own fields, the ones its doWrite drains (the same in
        # Twisted 22.4 and in current releases: tests/test_listening.py checks both through CI).  An aborted
        # connection sends nothing more: Twisted's own write buffers it behind a doWrite that never runs.
        if (type(data) is bytes and data and self.connected and not self.disconnecting and not self._aborting
                and not self._writeDisconnected and not self._tempDataLen and self.offset == len(self.dataBuffer)):
            try:
                sent = self.socket.send(data)
            except OSError:  # would block, or the link is gone: the buffered write meets it and says so
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        super().write(data)


class _Port(tcp.Port):
    # Twisted's documented way to choose the connections' class: the Port calls ``transport`` as it would Server.
    transport = SendAtOnce


def listen_tls(reactor: Any, port: int, factory: Any, context_factory: Any,
               interface: str = "", backlog: int = 50) -> tcp.Port:
    """Listen on ``port`` for TLS connections served by ``factory``, as ``reactor.listenSSL`` would, with
    :class:`SendAtOnce` connections and without the aggregation of small TLS writes.  Raises
    ``CannotListenError`` when the port cannot be had."""
    tls_factory = TLSMemoryBIOFactory(context_factory, False, cast(IProtocolFactory, factory))
    tls_factory.protocol = TLSMemoryBIOProtocol
    listening = _Port(port, cast(IProtocolFactory, tls_factory), backlog, interface, reactor)
    listening.startListening()
    return listening
