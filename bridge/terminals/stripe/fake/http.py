"""The fake's HTTP face: a twisted.web resource over :meth:`FakeStripe.handle`, and the server that listens and
closes every connection at stop (tests must leave nothing open)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from bridge.core.connections import OpenConnections
from bridge.core.reactor_types import Listener
from bridge.terminals.stripe.fake.wire import to_json

if TYPE_CHECKING:
    from bridge.terminals.stripe.fake.model import FakeStripe


class _QuietSite(Site):
    """No access log: the fake's requests are recorded on the fake itself (``FakeStripe.requests``)."""

    noisy = False

    def log(self, request: Any) -> None:
        pass


class FakeServer:
    """Listens for the fake; :meth:`stop` stops listening and drops the connections still open."""

    def __init__(self, fake: "FakeStripe") -> None:
        self._fake = fake
        self._wrapper: Optional[OpenConnections] = None
        self.port: Any = None

    def listen(self, reactor: Listener, description: str) -> "Deferred[Any]":
        self._wrapper = OpenConnections(_QuietSite(self._fake.resource()))
        d = serverFromString(reactor, description).listen(self._wrapper)

        def listening(port: Any) -> Any:
            self.port = port
            return port

        return d.addCallback(listening)

    @property
    def url(self) -> str:
        address = self.port.getHost()
        return f"http://{address.host}:{address.port}"

    def stop(self) -> "Deferred[None]":
        d = self.port.stopListening() if self.port is not None else succeed(None)
        self.port = None
        wrapper = self._wrapper
        if wrapper is None:
            return d
        return d.addCallback(lambda _: wrapper.close_all())


class FakeResource(Resource):
    isLeaf = True

    def __init__(self, fake: FakeStripe) -> None:
        super().__init__()
        self._fake = fake

    def render(self, request: Any) -> Any:
        method = request.method.decode()
        path = request.path.decode()
        body = request.content.read() if request.content is not None else b""
        if path.startswith("/_fake/"):
            status, knob_answer = self._fake.handle_knob(path, body)
            request.setResponseCode(status)
            request.setHeader(b"content-type", b"application/json")
            return to_json(knob_answer)
        headers = {name: (request.getHeader(name) or None) for name in
                   ("authorization", "idempotency-key", "stripe-version", "content-type")}
        query = request.uri.decode().partition("?")[2]
        status, extra, payload, drop = self._fake.handle(method, path, headers, body, query)
        stored = self._fake.last_stored
        if drop:
            request.channel.transport.abortConnection()
            return NOT_DONE_YET

        def answer() -> None:
            if stored is not None:
                stored.in_flight = False
            if request.finished or getattr(request, "_disconnected", False):
                return
            request.setResponseCode(status)
            request.setHeader(b"content-type", b"application/json")
            for name, value in extra.items():
                request.setHeader(name.encode(), value.encode())
            request.write(payload)
            request.finish()

        if self._fake.slow > 0:
            self._fake._later("slow:" + extra["Request-Id"], self._fake.slow, answer)
            return NOT_DONE_YET
        answer()
        return NOT_DONE_YET
