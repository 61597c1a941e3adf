"""HTTPS for the uplink: a verifying TLS policy (system CAs or a pinned CA file) and a small request helper.

Twisted's ``Agent`` with our policy, no redirects followed, a deadline on every request and a cap on the answer's
size.  Failures become :class:`BridgeError` ``uplink_unreachable`` with words an installer can act on.
"""

from __future__ import annotations

from dataclasses import dataclass
import typing
from typing import Any, Optional, cast

from OpenSSL import SSL
from twisted.internet import error as net_error
from twisted.internet import ssl
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, inlineCallbacks, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone, ResponseFailed
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IPolicyForHTTPS
from zope.interface import implementer

from bridge import __version__
from bridge.core.reactor_types import TCPClock
from bridge.errors import BridgeError

USER_AGENT = f"terminal-bridge/{__version__}"  # not a browser's: Odoo then skips its bundle-version check
MAX_BODY = 1 << 20
DEFAULT_TIMEOUT = 30.0


def trust_root(ca_file: Optional[str]) -> Any:
    """The system's CAs, or exactly the certificates in ``ca_file`` (a private CA or a self-signed server)."""
    if not ca_file:
        return ssl.platformTrust()
    with open(ca_file, "rb") as f:
        data = f.read()
    marker = b"-----BEGIN CERTIFICATE-----"
    pems = [marker + part for part in data.split(marker)[1:]]
    return ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(pem) for pem in pems])


@implementer(IPolicyForHTTPS)
class TLSPolicy:
    """Verify the server's certificate and host name against :func:`trust_root`; TLS 1.2 at least."""

    def __init__(self, ca_file: Optional[str] = None) -> None:
        self._trust = trust_root(ca_file)
        self.ca_file = ca_file

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        host = hostname.decode("ascii") if isinstance(hostname, bytes) else hostname
        return ssl.optionsForClientTLS(host, trustRoot=self._trust,
                                       extraCertificateOptions={"raiseMinimumTo": ssl.TLSVersion.TLSv1_2})


@dataclass(frozen=True)
class Response:
    code: int
    headers: Headers
    body: bytes

    def header(self, name: str) -> list[str]:
        return [v.decode("latin-1") for v in self.headers.getRawHeaders(name.encode("ascii"), [])]


class _Producer(typing.Protocol):
    """What is used of a response body's transport: Twisted types ``Protocol.transport`` as an optional
    ITransport, and its IPushProducer is a zope interface that mypy cannot call through without the mypy-zope
    plugin (pyproject.toml's mypy section)."""

    def stopProducing(self) -> None: ...


class _Body(Protocol):
    def __init__(self, finished: Deferred, limit: int) -> None:
        self._finished = finished
        self._limit = limit
        self._parts: list[bytes] = []
        self._size = 0

    def dataReceived(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._limit:
            cast(_Producer, self.transport).stopProducing()
            if not self._finished.called:
                self._finished.errback(BridgeError("uplink_too_large",
                                                   f"The server's answer is larger than {self._limit} bytes."))
            return
        self._parts.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._finished.called:
            return
        if reason is None or reason.check(ResponseDone):
            self._finished.callback(b"".join(self._parts))
        else:
            self._finished.errback(reason)


class HTTPS:
    """Requests to one cloud service (one uplink), with its TLS policy and deadlines."""

    def __init__(self, reactor: TCPClock, policy: TLSPolicy, timeout: float = DEFAULT_TIMEOUT,
                 max_body: int = MAX_BODY) -> None:
        self._reactor = reactor
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = 2
        self._pool.cachedConnectionTimeout = 60
        self._agent = Agent(reactor, contextFactory=policy, connectTimeout=timeout, pool=self._pool)
        self._timeout = timeout
        self._max_body = max_body
        self._in_flight: set[Deferred] = set()
        self._closing = False

    def close(self) -> Deferred:
        """Cancel what is still in flight (a login or fetch its owner no longer waits for: the uplink is stopping)
        and close the kept connections."""
        self._closing = True
        for d in list(self._in_flight):
            d.cancel()
        return self._pool.closeCachedConnections()

    def _track(self, d: Deferred) -> Deferred:
        self._in_flight.add(d)

        def done(result: Any) -> Any:
            self._in_flight.discard(d)
            return result

        return d.addBoth(done)

    @inlineCallbacks
    def request(self, method: str, url: str, body: Optional[bytes] = None, content_type: Optional[str] = None,
                headers: Optional[dict[str, str]] = None):
        """Fires with a :class:`Response`; fails with BridgeError ``uplink_unreachable`` (words in the message)."""
        all_headers = {"User-Agent": USER_AGENT}
        all_headers.update(headers or {})
        if content_type:
            all_headers["Content-Type"] = content_type
        raw = Headers({k.encode("ascii"): [v.encode("latin-1")] for k, v in all_headers.items()})
        # _Bytes is an IBodyProducer (@implementer, which mypy sees only with the mypy-zope plugin)
        producer = cast(IBodyProducer, _Bytes(body)) if body is not None else None
        try:
            d = self._agent.request(method.encode("ascii"), url.encode("ascii"), raw, producer)
            d.addTimeout(self._timeout, cast(IReactorTime, self._reactor))
            response = yield self._track(d)
            finished: Deferred = Deferred()
            response.deliverBody(_Body(finished, self._max_body))
            finished.addTimeout(self._timeout, cast(IReactorTime, self._reactor))
            data = yield self._track(finished)
        except CancelledError:
            raise
        except BridgeError:
            raise
        except Exception:
            if self._closing:  # cancelled by close(): a ConnectingCancelledError or a cancelled response
                raise CancelledError() from None
            raise BridgeError("uplink_unreachable", describe(Failure(), url)) from None
        return Response(response.code, response.headers, data)


@implementer(IBodyProducer)
class _Bytes:
    """A request body already in memory."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: Any) -> Deferred:
        consumer.write(self._data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def describe(failure: Failure, url: str) -> str:
    """Why a request to ``url`` got no answer, in words an installer can act on."""
    value = failure.value
    reasons = list(getattr(value, "reasons", []) or [])
    if isinstance(value, ResponseFailed) or reasons:
        for reason in reasons:
            if reason.check(SSL.Error):
                return (f"TLS to {url} failed: the server's certificate is not trusted or does not name the host "
                        f"({_ssl_words(reason.value)}); check the uplink's ca_file")
        if reasons:
            value = reasons[0].value
    if isinstance(value, SSL.Error):
        return f"TLS to {url} failed: {_ssl_words(value)}; check the uplink's ca_file"
    if isinstance(value, (TimeoutError, net_error.TimeoutError, CancelledError)):
        return f"no answer from {url} in time"
    if isinstance(value, net_error.ConnectionRefusedError):
        return f"{url} refused the connection (is the address right, is the server up?)"
    if isinstance(value, net_error.DNSLookupError):
        return f"the name in {url} cannot be resolved (check the address and the shop's DNS)"
    if isinstance(value, net_error.ConnectError):
        return f"cannot connect to {url}: {value}"
    return f"request to {url} failed: {value.__class__.__name__} {value}"


def _ssl_words(error: Any) -> str:
    try:
        parts = [str(item[2]) for item in error.args[0] if len(item) > 2]
    except (IndexError, TypeError):
        parts = []
    return ", ".join(parts) or str(error) or "handshake failed"
