"""A server factory that knows its open connections, so that stopping a server can close them too.

A listening port's ``stopListening`` leaves accepted connections alone: a browser's keep-alive connection to the
status page, or a test's client of the fake Stripe, would outlive the server (and their idle timers with them).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IProtocolNegotiationFactory
from twisted.protocols.policies import WrappingFactory
from zope.interface import implementer


@implementer(IProtocolNegotiationFactory)
class OpenConnections(WrappingFactory):
    """Wraps a server factory (a twisted.web ``Site``); :meth:`close_all` drops what is still open."""

    noisy = False

    def __init__(self, wrapped: Any) -> None:
        super().__init__(wrapped)
        self._when_none: list[Deferred] = []

    def acceptableProtocols(self) -> list[bytes]:
        # TLS asks the outermost factory for its ALPN choices: the wrapped site's (HTTP/2 when h2 is installed).
        choose = getattr(self.wrappedFactory, "acceptableProtocols", None)
        return list(choose()) if choose is not None else []

    def unregisterProtocol(self, p: Any) -> None:
        super().unregisterProtocol(p)
        if not self.protocols:
            waiting, self._when_none = self._when_none, []
            for d in waiting:
                d.callback(None)

    def close_all(self) -> Deferred:
        """Drop every open connection; fires once all of them are gone."""
        if not self.protocols:
            return succeed(None)
        d: Deferred = Deferred()
        self._when_none.append(d)
        for p in list(self.protocols):
            p.transport.abortConnection()
        return d
