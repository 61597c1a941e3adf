"""Caisse-AP over TCP: the terminal listens (port 8888 by default); one connection per payment.

The wire has no terminator, so the answer is over when the bytes parse as a whole message and then either the
line stays quiet for ``quiet_period`` seconds or the terminal closes (seen with a peek at the socket as the
answer is read, or when Twisted reads the close).  Once the request is written, any trouble
(link lost, timeout, unreadable answer) ends the payment as ``unknown``: the customer may have paid.
"""

from __future__ import annotations

import socket
from typing import Any, Mapping, Optional, cast

from twisted.internet.abstract import isIPv6Address
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred, succeed
from twisted.internet.interfaces import ISystemHandle
from twisted.internet.protocol import ClientFactory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from bridge.core import safety, states
from bridge.core.deferreds import follow
from bridge.core.faults import checkpoint
from bridge.errors import BridgeError
from bridge.core.contract import BeforeSend, ITerminalDriver, Outcome, PaymentRequest, TerminalStatus
from bridge.core.reactor_types import Clock, DelayedCall, SystemHandle, TCPClock, Transport
from bridge.terminals.caisse_ap.options import MAY_HAVE_PAID, parse_timings_and_identity
from bridge.terminals.caisse_ap.codec import (
    IDENTITY_FIELDS,
    AnswerParser,
    MalformedAnswer,
    encode_request,
    checked_identity,
    outcome_from_answer,
)

DEFAULT_PORT = 8888
#: Seconds our end of a payment's connection stays open after the terminal closed its end and the outcome was
#: given: the outcome's write and event come first (half a millisecond to a few), the tear-down (a turn of the
#: reactor and Twisted's connectionLost) in a quiet moment after, or while the journal's fsync is waited for.  A
#: next payment on the terminal, or the bridge's stop, closes it at once.
CLOSE_AFTER = 0.001

_MESSAGES = {
    "terminal_busy": "The payment terminal is busy with another payment. Wait for it to finish.",
    "terminal_unreachable": (
        "The payment terminal could not be reached. Check that it is switched on and connected."
    ),
    "link_lost": f"The connection to the payment terminal was lost after the payment was sent. {MAY_HAVE_PAID}",
    "answer_timeout": f"The payment terminal did not answer in time. {MAY_HAVE_PAID}",
    "malformed_answer": f"The payment terminal's answer could not be read. {MAY_HAVE_PAID}",
    "invalid_request": "The bridge could not build a request for this terminal. Check the terminal's settings.",
}
#: Codes that say something about the link to the terminal; ``status()`` shows the last one.
_LINK_PROBLEMS = frozenset(
    {"terminal_unreachable", "link_lost", "answer_timeout", "malformed_answer", "internal_error"}
)


def _outcome(state: str, code: str, extra: str = "", **details: Any) -> Outcome:
    message = _MESSAGES[code] + (f" {extra}" if extra else "")
    return Outcome(state, code, message, details)


_Answer = dict[str, str] | Outcome


def write_now(transport: Transport, payload: bytes) -> None:
    """Hand ``payload`` to the connection's socket at once; whatever it does not take goes through ``write``.

    A transport's ``write`` only buffers: the bytes would leave at the reactor's next turn, after all that this
    turn still does once the request may go (telling the client of the payment's two states, their log lines).
    The terminal is the slow party, so it gets the request first and works on it meanwhile.  Only for a plain TCP
    connection's first write (the bytes go to the socket as they are, and nothing is buffered ahead of them), as
    the request is; a transport without a socket (``ISystemHandle``) is simply written to."""
    sent = 0
    if ISystemHandle.providedBy(transport):
        try:
            sent = cast(SystemHandle, transport).getHandle().send(payload)
        except OSError:  # the socket would block, or the link is gone: the transport's write meets it and says so
            sent = 0
    if sent < len(payload):
        transport.write(payload[sent:])


def peer_has_closed(transport: Transport) -> bool:
    """Whether the other end has closed the connection and everything it sent has been read: a peek at the
    socket reads nothing only then (it would block while the peer is still open).  Twisted reads that close at
    the reactor's next turn; this says so at once.  False for a transport without a socket, or on an error (the
    reactor's own read meets it and says so)."""
    if not ISystemHandle.providedBy(transport):
        return False
    try:
        return cast(SystemHandle, transport).getHandle().recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except OSError:
        return False


class _AnswerReader(Protocol):
    """Writes one request and reads its answer.

    ``answer`` fires with the answer's fields, or with an ``unknown`` Outcome when no readable answer came.
    Bytes before the request is written are ignored: a terminal does not speak first.
    """

    _log = Logger()

    def __init__(self, clock: Clock, answer_timeout: float, quiet_period: float) -> None:
        #: Fires once connected; fails with why the connection could not be made (:class:`_OneConnection`).
        self.linked: Deferred[None] = Deferred()
        self.answer: Deferred[_Answer] = Deferred()
        self.lost = False
        #: The terminal had closed when its whole answer was read (``peer_has_closed``).
        self.peer_closed = False
        self._clock = clock
        self._answer_timeout = answer_timeout
        self._quiet_period = quiet_period
        self._parser = AnswerParser()
        self._sent = False
        self._quiet: DelayedCall | None = None
        self._deadline: DelayedCall | None = None
        self._close_waiters: list[Deferred[None]] = []

    def connectionMade(self) -> None:
        self.linked.callback(None)

    def send(self, payload: bytes) -> None:
        self._sent = True
        self._deadline = self._clock.callLater(self._answer_timeout, self._timed_out)
        write_now(cast(Transport, self.transport), payload)  # connected
        checkpoint("caisse_ap.request_written")

    def dataReceived(self, data: bytes) -> None:
        if not self._sent:
            self._log.warn("Ignoring {size} bytes the terminal sent before the request", size=len(data))
            return
        if self.answer.called:
            return
        checkpoint("caisse_ap.answer_bytes")
        try:
            self._parser.feed(data)
        except MalformedAnswer as error:
            self._finish(_outcome(states.UNKNOWN, "malformed_answer", reason=error.reason))
            return
        self._cancel_quiet()
        if self._parser.complete:
            if peer_has_closed(cast(Transport, self.transport)):
                # The terminal answered and closed, as most do: the answer is whole, no need to wait for the
                # turn that reads the close (connectionLost would take it then).  The close is left unread
                # until the driver closes its end (CaisseAPTCPDriver: after the outcome's write).
                self.peer_closed = True
                cast(Any, self.transport).pauseProducing()
                self._take()
            else:
                self._quiet = self._clock.callLater(self._quiet_period, self._take)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True
        if self._sent and not self.answer.called:
            if self._parser.complete:
                self._take()
            else:
                self._finish(_outcome(states.UNKNOWN, "link_lost"))
        waiters, self._close_waiters = self._close_waiters, []
        for waiter in waiters:
            waiter.callback(None)
        self._unlink()

    def _unlink(self) -> None:
        """Let go of the ended connection.  Twisted's client connection and its connector keep pointing at each
        other once it is over (a reference cycle only the cyclic collector frees); through ``transport`` it held
        this reader, its parser and the answer's bytes until a collection found the cycle: about 2 MB of the
        bridge's memory after the benchmark's load (docs/performance.md).  Without the links they are freed as soon as the payment is."""
        transport, self.transport = self.transport, None
        connector = getattr(transport, "connector", None)
        if connector is not None and getattr(connector, "transport", None) is transport:
            connector.transport = None

    def close(self) -> Deferred[None]:
        """Close the connection; the Deferred fires once it is gone."""
        if self.lost:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._close_waiters.append(waiter)
        cast(Transport, self.transport).loseConnection()  # connected: not lost
        return waiter

    def _timed_out(self) -> None:
        self._deadline = None
        if self._parser.complete:  # the answer is here; only the quiet period was still running
            self._take()
        else:
            self._finish(_outcome(states.UNKNOWN, "answer_timeout"))

    def _take(self) -> None:
        checkpoint("caisse_ap.answer_taken")
        self._finish(self._parser.as_dict())

    def _cancel_quiet(self) -> None:
        if self._quiet is not None and self._quiet.active():
            self._quiet.cancel()
        self._quiet = None

    def _finish(self, result: _Answer) -> None:
        self._cancel_quiet()
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        self.answer.callback(result)


class _OneConnection(ClientFactory):
    """Hands out the one reader of a payment, once, and tells it when the connection could not be made.

    The reactor's ``connectTCP`` is called with it directly: a client endpoint would wrap it in factories and a
    Deferred that refer to each other, garbage for the cyclic collector after every payment."""

    noisy = False  # no "Starting factory" line for every payment

    def __init__(self, reader: _AnswerReader) -> None:
        self._reader: Optional[_AnswerReader] = reader
        self._linked = reader.linked

    def buildProtocol(self, addr: Any) -> Optional[_AnswerReader]:
        reader, self._reader = self._reader, None
        return reader

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        if not self._linked.called:
            self._linked.errback(reason)


@implementer(ITerminalDriver)
class CaisseAPTCPDriver:
    """A Caisse-AP terminal reached over TCP.  One payment at a time."""

    kind = "caisse-ap-tcp"
    #: Only a TCP connection is made before before_send: the core may start a payment while journaling it.
    pay_while_accepting = True
    _log = Logger()

    def __init__(
        self,
        name: str,
        reactor: TCPClock,
        host: str,
        port: int = DEFAULT_PORT,
        *,
        connect_timeout: float = 10.0,
        answer_timeout: float = 180.0,
        quiet_period: float = 0.3,
        pos_number: str = "01",
        protocol_version: str = "0300",
        cash_register_id: str = "012345678901",
    ) -> None:
        self.name = name
        self._reactor = reactor
        self._host = host
        self._port = port
        self._connect_timeout = connect_timeout
        self._answer_timeout = answer_timeout
        self._quiet_period = quiet_period
        self._identity = checked_identity(pos_number, protocol_version, cash_register_id)
        self._payment_id: str | None = None
        self._sent = False
        self._last_error: str | None = None
        #: The last payment's connection, when its terminal closed after answering: our end is closed a moment
        #: after the outcome was given (``CLOSE_AFTER``), or at once when the next payment starts or the bridge
        #: stops; and the Deferred of that close.  The next payment connects once it is gone.
        self._lingering: _AnswerReader | None = None
        self._linger_call: DelayedCall | None = None
        self._closing: Deferred[None] | None = None

    @property
    def address(self) -> str:
        host = f"[{self._host}]" if isIPv6Address(self._host) else self._host
        return f"{host}:{self._port}"

    def status(self) -> TerminalStatus:
        """Nothing watches a TCP terminal between payments: it is up unless its last payment met a link problem
        (``last_error``), until a payment reaches it again."""
        if self._payment_id is None:
            state, detail = "idle", "Ready."
        else:
            state, detail = "busy", f"Payment {self._payment_id} in progress."
        return TerminalStatus(state, detail, up=not self._last_error,
                              facts={"address": self.address, "last_error": self._last_error})

    def start(self) -> None:
        """Nothing to open: each payment connects anew."""

    def stop(self) -> "Optional[Deferred[None]]":
        """Nothing to close but the last payment's connection, if it is still open behind its outcome: fires
        once it is gone."""
        closing = self._close_last()
        return None if closing is None else follow(closing)

    def _close_last(self) -> "Optional[Deferred[None]]":
        """Close the last payment's connection now if it is still open: the Deferred of its close, None if gone."""
        if self._linger_call is not None and self._linger_call.active():
            self._linger_call.cancel()
        self._linger_call = None
        if self._lingering is not None:
            reader, self._lingering = self._lingering, None
            self._closing = reader.close()
        if self._closing is None or self._closing.called:
            self._closing = None
            return None
        return self._closing

    def cancel(self, payment_id: str) -> None:
        """Caisse-AP over TCP has no cancel message: the cashier cancels on the terminal itself."""
        return None

    def recover(self, payment_id: str, details: Mapping[str, Any]) -> "Deferred[Optional[Outcome]]":
        """A Caisse-AP terminal keeps no record the bridge can read: its receipt settles the payment."""
        return succeed(None)

    def pay(self, request: PaymentRequest, before_send: BeforeSend) -> Deferred[Outcome]:
        if self._payment_id is not None:
            self._log.warn(
                "Terminal {terminal} busy with {busy_with}; refused payment {payment_id}",
                terminal=self.name, busy_with=self._payment_id, payment_id=request.payment_id,
                state=states.FAILED,
            )
            return succeed(_outcome(states.FAILED, "terminal_busy"))
        self._payment_id = request.payment_id
        self._sent = False
        d: Deferred[Outcome] = self._pay(request, before_send)
        d.addErrback(self._crashed, request)
        d.addCallback(self._done, request)
        return d

    @inlineCallbacks
    def _pay(self, request: PaymentRequest, before_send: BeforeSend) -> Any:
        try:
            payload = encode_request(request, **self._identity)
        except BridgeError as error:
            return Outcome(states.FAILED, error.code, error.message)
        except ValueError:
            return _outcome(states.FAILED, "invalid_request")

        closing = self._close_last()  # one connection to the terminal at a time
        if closing is not None:
            yield closing
        reader = _AnswerReader(self._reactor, self._answer_timeout, self._quiet_period)
        try:
            self._reactor.connectTCP(self._host, self._port, _OneConnection(reader), timeout=self._connect_timeout)
            yield reader.linked
        except Exception as error:
            self._log.info(
                "Terminal {terminal} at {address} unreachable: {error}",
                terminal=self.name, address=self.address, error=str(error), payment_id=request.payment_id,
            )
            return _outcome(states.FAILED, "terminal_unreachable")

        try:
            yield maybeDeferred(before_send)
        except Exception as error:
            yield reader.close()
            return safety.not_sent(error, self._log, request.payment_id, self.name)
        if reader.lost:
            return _outcome(states.FAILED, "terminal_unreachable")

        self._sent = True
        reader.send(payload)
        self._log.debug(
            "Sent payment {payment_id} to terminal {terminal}",
            payment_id=request.payment_id, terminal=self.name, state=states.IN_PROGRESS,
            amount=request.amount, currency=request.currency.code,
        )
        answer = yield reader.answer
        if reader.peer_closed and not reader.lost:
            # The terminal closed after its answer: our end's close (a turn of the reactor and Twisted's tear-down)
            # is left for a moment, so that the outcome is journaled and told first.
            self._lingering = reader
            self._linger_call = self._reactor.callLater(CLOSE_AFTER, self._close_last)
        else:
            yield reader.close()
        if isinstance(answer, Outcome):
            return answer
        return outcome_from_answer(request, answer, self._identity["pos_number"])

    def _crashed(self, failure: Failure, request: PaymentRequest) -> Outcome:
        return safety.crashed(failure, self._log, request.payment_id, self.name, self._sent, MAY_HAVE_PAID)

    def _done(self, outcome: Outcome, request: PaymentRequest) -> Outcome:
        self._payment_id = None
        if outcome.code in _LINK_PROBLEMS:
            self._last_error = outcome.code
        elif self._sent:
            self._last_error = None
        return outcome  # the core logs the payment's end, with every field


def _address(text: str) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address -> (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not isIPv6Address(host) or (rest and not rest.startswith(":")):
            raise ValueError(text)
        port_text = rest[1:] if rest else ""
    elif text.count(":") > 1:
        if not isIPv6Address(text):
            raise ValueError(text)
        host, port_text = text, ""
    else:
        host, _, port_text = text.partition(":")
    if not host or any(ch.isspace() for ch in host) or (port_text and not port_text.isdigit()):
        raise ValueError(text)
    port = int(port_text) if port_text else DEFAULT_PORT
    if not 1 <= port <= 65535:
        raise ValueError(text)
    return host, port


_TIMING_OPTIONS = ("connect_timeout", "answer_timeout", "quiet_period")


def parse_tcp_options(options: Mapping[str, str]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Check a terminal's configuration section: ``(constructor keyword arguments, [(key, problem)])``.

    The keyword arguments are those of :class:`CaisseAPTCPDriver` besides ``name`` and ``reactor``.
    """
    kwargs: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    known = {"type", "address", *_TIMING_OPTIONS, *IDENTITY_FIELDS}
    for key in options:
        if key not in known:
            problems.append((key, f"is not a setting of a Caisse-AP TCP terminal (known: {', '.join(sorted(known))})"))
    if "address" not in options:
        problems.append(("address", "is missing: give the terminal's IP address, e.g. 192.168.1.50:8888"))
    else:
        try:
            kwargs["host"], kwargs["port"] = _address(options["address"])
        except ValueError:
            problems.append(("address", f"{options['address']!r} is not host or host:port (port 1 to 65535)"))
    parse_timings_and_identity(options, _TIMING_OPTIONS, kwargs, problems)
    return kwargs, problems
