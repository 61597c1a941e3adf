"""Caisse-AP over a serial line or USB (CDC-ACM): the Concert link layer around Caisse-AP TLV or Concert V2.

The port is opened once, exclusively, and kept open.  When the device is missing or vanishes (cable pulled, USB
re-enumerated) the driver says ``disconnected`` with the reason and reopens it with a capped backoff; a payment
asked for meanwhile fails at once (``terminal_unreachable``, nothing charged).  When idle, a periodic ENQ/EOT call
tells whether the terminal still listens, because some go deaf after a night without traffic.

The payment is journaled (``before_send``) before the ENQ that opens its session.  Once the request frame has been
written, any trouble (device lost, no ACK, no answer, unreadable answer) ends the payment ``unknown``.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Mapping, Optional, cast

import serial as pyserial
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.serialport import (
    EIGHTBITS,
    PARITY_EVEN,
    PARITY_NONE,
    SEVENBITS,
    STOPBITS_ONE,
    SerialPort,
)
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from bridge.core import safety, states
from bridge.core.backoff import backoff
from bridge.errors import BridgeError
from bridge.core.contract import BeforeSend, ITerminalDriver, Outcome, PaymentRequest, TerminalStatus
from bridge.core.reactor_types import Clock, DelayedCall, FDClock
from bridge.terminals.caisse_ap import concert_v2, device_states
from bridge.terminals.caisse_ap.codec import (
    MalformedAnswer,
    encode_request,
    checked_identity,
    outcome_from_answer,
    parse_message,
)
from bridge.terminals.caisse_ap.link import (
    ACK_TIMEOUT,
    RETRY_DELAY,
    AnswerTimeout,
    ConcertLink,
    Delivered,
    Event,
    PingResult,
    Received,
    ReceiveFailed,
    SendFailed,
    Write,
)
from bridge.terminals.caisse_ap.options import MAY_HAVE_PAID
from bridge.terminals.caisse_ap.serial_options import (
    DEFAULT_ANSWER_TIMEOUT,
    DEFAULT_BAUDRATE,
    DEFAULT_HEALTH_INTERVAL,
    DEFAULT_LINE,
    PROTOCOL_TLV,
    PROTOCOL_V2,
    PROTOCOLS,
)

#: Line settings: data bits, parity, stop bits.  Native RS-232 Ingenico lines are 7E1; USB virtual ports ignore it.
#: The names are serial_options.LINE_NAMES, the ones check-config accepts (a test checks they agree).
LINES = {
    "7E1": (SEVENBITS, PARITY_EVEN, STOPBITS_ONE),
    "8N1": (EIGHTBITS, PARITY_NONE, STOPBITS_ONE),
}

#: Reopening a missing device: first after this many seconds, then less often, up to the maximum.
REOPEN_INITIAL_DELAY = 1.0
REOPEN_MAX_DELAY = 30.0

HEALTH_UNCHECKED = "unchecked"
HEALTH_UP = "up"
HEALTH_DOWN = "down"

_MESSAGES = {
    "terminal_busy": "The payment terminal is busy with another payment. Wait for it to finish.",
    "terminal_unreachable": "The payment terminal could not be reached. Nothing was charged.",
    "link_lost": f"The payment terminal's cable or device was lost after the payment was sent. {MAY_HAVE_PAID}",
    "no_ack": f"The payment terminal did not confirm it received the payment. {MAY_HAVE_PAID}",
    "answer_timeout": f"The payment terminal did not answer in time. {MAY_HAVE_PAID}",
    "malformed_answer": f"The payment terminal's answer could not be read. {MAY_HAVE_PAID}",
    "frame_rejected": (
        "The payment terminal refused the request on the line, so nothing was charged. Check the terminal's "
        "settings (line, speed, protocol)."
    ),
    "invalid_request": "The bridge could not build a request for this terminal. Check the terminal's settings.",
}
_LINK_PROBLEMS = frozenset(
    {"terminal_unreachable", "link_lost", "no_ack", "answer_timeout", "malformed_answer", "frame_rejected",
     "internal_error"}
)
CANCEL_MESSAGE = (
    "Press the red button on the payment terminal to cancel; the bridge then reports what the terminal answers."
)


def _outcome(state: str, code: str, extra: str = "", **details: Any) -> Outcome:
    message = _MESSAGES[code] + (f" {extra}" if extra else "")
    return Outcome(state, code, message, details)


class ExclusiveSerialPort(SerialPort):
    """Twisted's serial port, opened with an exclusive lock so that no other program shares the terminal."""

    _serialFactory = staticmethod(partial(pyserial.Serial, exclusive=True))


#: Major device numbers of Unix98 pseudo-terminal slaves (/dev/pts/N), see Linux's Documentation/admin-guide/devices.txt.
_PTY_SLAVE_MAJORS = range(136, 144)


def is_pseudo_terminal(device: str) -> bool:
    """Whether ``device`` (after symbolic links) is a pseudo-terminal: a virtual serial port made by socat,
    ser2net, a USB-over-network tool or the simulator, with no wire behind it."""
    try:
        status = os.stat(device)
    except OSError:
        return False
    return stat.S_ISCHR(status.st_mode) and os.major(status.st_rdev) in _PTY_SLAVE_MAJORS


def line_settings(device: str, line: str) -> tuple[int, str, float]:
    """(bytesize, parity, stopbits) to open ``device`` with for the configured ``line``.

    A pseudo-terminal has no wire, so no character size or parity: Linux keeps it at 8 bits without parity and,
    when asked for 7E1 with nothing else to change, refuses the whole setting (EINVAL).  The first open then works
    (the speed changes too) but every reopen fails.  Bytes pass through a pty as they are written, so it is opened
    at 8 bits without parity; whatever drives the real line at the other end applies 7E1 there.
    """
    bytesize, parity, stopbits = LINES[line]
    if is_pseudo_terminal(device):
        return EIGHTBITS, PARITY_NONE, stopbits
    return bytesize, parity, stopbits


def describe_open_error(device: str, error: BaseException) -> str:
    """Why ``device`` could not be opened, in words an installer can act on."""
    code = getattr(error, "errno", None)
    if code == errno.ENOENT or (code is None and not os.path.exists(device)):
        return f"The device {device} does not exist: is the terminal plugged in and switched on?"
    if code in (errno.EACCES, errno.EPERM):
        return f"Permission denied on {device}: the bridge's user must be in the dialout group."
    if code in (errno.EBUSY, errno.EAGAIN, errno.EWOULDBLOCK):
        return f"The device {device} is in use by another program."
    return f"The device {device} could not be opened: {error}"


class LinkRunner:
    """Runs a :class:`ConcertLink` on a clock: feeds it bytes, writes what it says, calls its timer, hands on events.

    Events are handled one at a time, in order, even when a handler feeds the link again.
    """

    def __init__(
        self, link: ConcertLink, clock: Clock, write: Callable[[bytes], Any],
        on_event: Callable[[Event], Any],
    ) -> None:
        self.link = link
        self._clock = clock
        self._write = write
        self._on_event = on_event
        self._timer: Optional[DelayedCall] = None
        self._queue: list[Event] = []
        self._running = False
        self._stopped = False

    def feed(self, data: bytes) -> None:
        self._run(self.link.receive(data, self._clock.seconds()))

    def send(self, payload: bytes, answer_timeout: Optional[float] = None) -> None:
        self._run(self.link.send(payload, self._clock.seconds(), answer_timeout))

    def ping(self) -> None:
        self._run(self.link.ping(self._clock.seconds()))

    def stop(self) -> None:
        self._stopped = True
        self._queue.clear()
        self._cancel_timer()

    def _tick(self) -> None:
        self._timer = None
        self._run(self.link.tick(self._clock.seconds()))

    def _run(self, events: list[Event]) -> None:
        if self._stopped:
            return
        self._queue.extend(events)
        if self._running:
            return
        self._running = True
        try:
            while self._queue and not self._stopped:
                event = self._queue.pop(0)
                if isinstance(event, Write):
                    self._write(event.data)
                else:
                    self._on_event(event)
        finally:
            self._running = False
        if not self._stopped:
            self._rearm()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _rearm(self) -> None:
        self._cancel_timer()
        deadline = self.link.deadline
        if deadline is not None:
            self._timer = self._clock.callLater(max(0.0, deadline - self._clock.seconds()), self._tick)


class _LineProtocol(Protocol):
    """Hands the port's bytes and its loss to the driver, which knows whether this port is still the current one."""

    def __init__(self, driver: CaisseAPSerialDriver) -> None:
        self._driver = driver

    def dataReceived(self, data: bytes) -> None:
        self._driver._data(self, data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._driver._lost(self, reason)


@dataclass(eq=False)
class _Payment:
    request: PaymentRequest
    result: Deferred = field(default_factory=Deferred)
    sending: bool = False  # handed to the link (ENQ may be out)
    delivered: bool = False  # the terminal acknowledged the frame


@implementer(ITerminalDriver)
class CaisseAPSerialDriver:
    """A Caisse-AP (or Concert V2) terminal on a serial line or USB.  One payment at a time.

    Call :meth:`start` once (it opens the device on the next reactor turn) and :meth:`stop` at shutdown.
    """

    kind = "caisse-ap-serial"
    _log = Logger()

    def __init__(
        self,
        name: str,
        reactor: FDClock,
        device: str,
        *,
        baudrate: int = DEFAULT_BAUDRATE,
        line: str = DEFAULT_LINE,
        protocol: str = PROTOCOL_TLV,
        answer_timeout: float = DEFAULT_ANSWER_TIMEOUT,
        health_interval: float = DEFAULT_HEALTH_INTERVAL,
        ack_timeout: float = ACK_TIMEOUT,
        retry_delay: float = RETRY_DELAY,
        pos_number: str = "01",
        protocol_version: str = "0300",
        cash_register_id: str = "012345678901",
        reopen_initial_delay: float = REOPEN_INITIAL_DELAY,
        reopen_max_delay: float = REOPEN_MAX_DELAY,
        port_factory: Callable[..., Any] = ExclusiveSerialPort,
    ) -> None:
        if line not in LINES:
            raise ValueError(f"line must be one of {', '.join(LINES)}, not {line!r}")
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
        self.name = name
        self._reactor = reactor
        self.device = device
        self._baudrate = baudrate
        self._line = line
        self._protocol_name = protocol
        self._answer_timeout = answer_timeout
        self._health_interval = health_interval
        self._ack_timeout = ack_timeout
        self._retry_delay = retry_delay
        self._identity = checked_identity(pos_number, protocol_version, cash_register_id)
        self._reopen_delay = backoff(reopen_initial_delay, reopen_max_delay)
        self._port_factory = port_factory

        self._port: Any = None
        self._line_protocol: Optional[_LineProtocol] = None
        self._runner: Optional[LinkRunner] = None
        self._disconnected: Optional[str] = "Not opened yet."
        self._health = HEALTH_UNCHECKED
        self._attempt = 0
        self._reopen_call: Optional[DelayedCall] = None
        self._health_loop: Optional[LoopingCall] = None
        self._payment: Optional[_Payment] = None
        self._last_error: Optional[str] = None
        self._device = device_states.CLOSED  # the device's life cycle: see device_states
        self._stop_waiters: list[Deferred[None]] = []

    # --- lifecycle ----------------------------------------------------------------------------------------

    def start(self) -> None:
        """Open the device on the next reactor turn, keep it open, and check the terminal periodically."""
        if self._device not in (device_states.CLOSED, device_states.STOPPING):
            return
        self._schedule_open(0.0)
        if self._health_interval > 0:
            self._health_loop = LoopingCall(self._check_health)
            self._health_loop.clock = cast(IReactorTime, self._reactor)
            self._health_loop.start(self._health_interval, now=False)

    def stop(self) -> Deferred[None]:
        """Stop reopening and checking, close the device; fires once it is closed."""
        if self._reopen_call is not None and self._reopen_call.active():
            self._reopen_call.cancel()
        self._reopen_call = None
        if self._health_loop is not None and self._health_loop.running:
            self._health_loop.stop()
        self._health_loop = None
        if self._port is None:
            if self._device != device_states.CLOSED:
                self._move(device_states.CLOSED)
            return succeed(None)
        self._move(device_states.STOPPING)
        waiter: Deferred[None] = Deferred()
        self._stop_waiters.append(waiter)
        self._port.loseConnection()
        return waiter

    @property
    def connected(self) -> bool:
        return self._runner is not None

    def _move(self, new: str) -> None:
        device_states.check(self._device, new)
        self._device = new

    def _schedule_open(self, delay: float) -> None:
        self._move(device_states.OPENING)
        self._reopen_call = self._reactor.callLater(delay, self._open)

    def _open(self) -> None:
        self._reopen_call = None
        if self._device != device_states.OPENING:
            return
        bytesize, parity, stopbits = line_settings(self.device, self._line)
        protocol = _LineProtocol(self)
        self._line_protocol = protocol
        try:
            port = self._port_factory(
                protocol, self.device, self._reactor,
                baudrate=self._baudrate, bytesize=bytesize, parity=parity, stopbits=stopbits,
            )
        except Exception as error:
            self._line_protocol = None
            reason = describe_open_error(self.device, error)
            if reason != self._disconnected:
                self._log.warn(
                    "Terminal {terminal}: cannot open {device}: {reason} Retrying in the background.",
                    terminal=self.name, device=self.device, reason=reason, state="disconnected",
                )
            self._disconnected = reason
            delay = self._reopen_delay(self._attempt)
            self._attempt += 1
            self._schedule_open(delay)
            return
        self._attempt = 0
        self._move(device_states.OPEN)
        self._port = port
        link = ConcertLink(ack_timeout=self._ack_timeout, retry_delay=self._retry_delay)
        self._runner = LinkRunner(link, self._reactor, port.write, self._event)
        self._disconnected = None
        self._health = HEALTH_UNCHECKED
        self._log.info(
            "Terminal {terminal}: opened {device} ({baudrate} baud, {line}, {protocol})",
            terminal=self.name, device=self.device, baudrate=self._baudrate, line=self._line,
            protocol=self._protocol_name, state="connected",
        )
        if self._health_interval > 0:
            self._check_health()

    def _data(self, protocol: _LineProtocol, data: bytes) -> None:
        if protocol is self._line_protocol and self._runner is not None:
            self._runner.feed(data)

    def _lost(self, protocol: _LineProtocol, reason: Failure) -> None:
        if protocol is not self._line_protocol:
            return
        runner = self._runner
        frame_sent = runner is not None and runner.link.frame_sent
        if runner is not None:
            runner.stop()
        self._runner = None
        self._port = None
        self._line_protocol = None
        self._health = HEALTH_UNCHECKED  # nothing can answer on a device that is gone
        stopping = self._device == device_states.STOPPING
        if stopping:
            self._disconnected = "Stopped."
            self._move(device_states.CLOSED)
        else:
            if self._device == device_states.WAKING:
                self._disconnected = (f"Reopening {self.device}: the terminal stopped answering. Check that it "
                                      "is on and in cash-register mode.")
            else:
                self._disconnected = (
                    f"The device {self.device} went away (cable pulled, terminal restarted or USB re-plugged); "
                    "reopening it."
                )
                self._log.warn(
                    "Terminal {terminal}: lost {device} ({error}); reopening it",
                    terminal=self.name, device=self.device, error=reason.getErrorMessage(), state="disconnected",
                )
            self._schedule_open(self._reopen_delay(0))
            self._attempt = 1
        payment = self._payment
        if payment is not None:
            if payment.sending and frame_sent:
                self._finish(payment, _outcome(states.UNKNOWN, "link_lost"))
            else:
                self._finish(payment, _outcome(states.FAILED, "terminal_unreachable", self._disconnected))
        if stopping:
            waiters, self._stop_waiters = self._stop_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    # --- health -------------------------------------------------------------------------------------------

    def _check_health(self) -> None:
        runner = self._runner
        if runner is None or self._payment is not None or not runner.link.idle or runner.link.awaiting_answer:
            return
        runner.ping()

    def _reopen_to_wake(self) -> None:
        if self._port is None or self._device != device_states.OPEN:
            return
        self._log.warn("Terminal {terminal} still does not answer: reopening {device} to wake it",
                       terminal=self.name, device=self.device, state="down")
        self._move(device_states.WAKING)
        self._port.loseConnection()

    def _set_health(self, health: str) -> None:
        if health == self._health:
            return
        previous, self._health = self._health, health
        if health == HEALTH_DOWN:
            self._log.warn(
                "Terminal {terminal} does not answer on {device}: check that it is on and in cash-register mode",
                terminal=self.name, device=self.device, state="down",
            )
        elif previous == HEALTH_DOWN:
            self._log.info("Terminal {terminal} answers again on {device}", terminal=self.name,
                           device=self.device, state="up")

    # --- status -------------------------------------------------------------------------------------------

    def status(self) -> TerminalStatus:
        """Down while the device is missing or the terminal does not answer the health check; a link problem
        during a payment (``last_error``) does not make it down: the health check says whether it answers."""
        up = False
        if self._disconnected is not None:
            state, detail = "disconnected", self._disconnected
        elif self._payment is not None:
            state, detail, up = "busy", f"Payment {self._payment.request.payment_id} in progress.", True
        elif self._health == HEALTH_DOWN:
            state, detail = "down", (
                "The terminal does not answer the bridge's calls: check that it is switched on and set to "
                "cash-register mode."
            )
        else:
            state, detail, up = "idle", "Ready.", True
        return TerminalStatus(state, detail, up=up, facts={
            "device": self.device, "protocol": self._protocol_name, "line": self._line, "baudrate": self._baudrate,
            "health": self._health, "last_error": self._last_error,
        })

    # --- payments -----------------------------------------------------------------------------------------

    def cancel(self, payment_id: str) -> str:
        """Concert has no cancel message: only the cashier can cancel, on the terminal."""
        return CANCEL_MESSAGE

    def recover(self, payment_id: str, details: Mapping[str, Any]) -> "Deferred[Optional[Outcome]]":
        """A Caisse-AP terminal keeps no record the bridge can read: its receipt settles the payment."""
        return succeed(None)

    def pay(self, request: PaymentRequest, before_send: BeforeSend) -> Deferred[Outcome]:
        if self._payment is not None:
            self._log.warn(
                "Terminal {terminal} busy with {busy_with}; refused payment {payment_id}",
                terminal=self.name, busy_with=self._payment.request.payment_id, payment_id=request.payment_id,
                state=states.FAILED,
            )
            return succeed(_outcome(states.FAILED, "terminal_busy"))
        if self._runner is None:
            self._log.info(
                "Terminal {terminal} disconnected; refused payment {payment_id}: {reason}",
                terminal=self.name, payment_id=request.payment_id, reason=self._disconnected, state=states.FAILED,
            )
            return succeed(self._done(_outcome(states.FAILED, "terminal_unreachable", self._disconnected or ""),
                                      request))
        try:
            payload = self._encode(request)
        except BridgeError as error:
            return succeed(Outcome(states.FAILED, error.code, error.message))
        except ValueError:
            return succeed(_outcome(states.FAILED, "invalid_request"))

        payment = _Payment(request)
        self._payment = payment
        result = payment.result
        result.addCallback(self._done, request)
        d = maybeDeferred(before_send)
        d.addCallbacks(lambda _: self._send(payment, payload), lambda f: self._not_sent(payment, f))
        d.addErrback(self._crashed, payment)
        return result

    def _encode(self, request: PaymentRequest) -> bytes:
        if self._protocol_name == PROTOCOL_V2:
            return concert_v2.encode_request(request, self._identity["pos_number"])
        return encode_request(request, **self._identity)

    def _decode(self, request: PaymentRequest, payload: bytes) -> Outcome:
        pos_number = self._identity["pos_number"]
        try:
            if self._protocol_name == PROTOCOL_V2:
                return concert_v2.outcome_from_answer(request, concert_v2.decode_answer(payload), pos_number)
            return outcome_from_answer(request, dict(parse_message(payload)), pos_number)
        except MalformedAnswer as error:
            return _outcome(states.UNKNOWN, "malformed_answer", reason=error.reason)

    def _not_sent(self, payment: _Payment, failure: Failure) -> None:
        self._finish(payment, safety.not_sent(failure, self._log, payment.request.payment_id, self.name))

    def _send(self, payment: _Payment, payload: bytes) -> None:
        if self._payment is not payment:
            return
        if self._runner is None:
            self._finish(payment, _outcome(states.FAILED, "terminal_unreachable", self._disconnected or ""))
            return
        request = payment.request
        payment.sending = True
        self._log.debug(
            "Sending payment {payment_id} to terminal {terminal}",
            payment_id=request.payment_id, terminal=self.name, state=states.IN_PROGRESS,
            amount=request.amount, currency=request.currency.code,
        )
        self._runner.send(payload, self._answer_timeout)

    def _event(self, event: Event) -> None:
        payment = self._payment
        waiting = payment is not None and payment.sending  # below, `and payment is not None` tells mypy so
        if isinstance(event, PingResult):
            if not event.alive and self._health == HEALTH_DOWN and payment is None:
                # A second silent check in a row.  Some terminals go deaf on their USB link after a night idle
                # until the port is opened again (OCA/pos#701): close it and reopen it rather than wait for a
                # person to unplug the cable.
                self._reopen_to_wake()
            self._set_health(HEALTH_UP if event.alive else HEALTH_DOWN)
        elif isinstance(event, Delivered):
            self._set_health(HEALTH_UP)
            if waiting and payment is not None:
                payment.delivered = True
                self._log.debug("Terminal {terminal} took payment {payment_id} (after {attempts} attempt(s))",
                               terminal=self.name, payment_id=payment.request.payment_id, attempts=event.attempts)
        elif isinstance(event, SendFailed):
            if event.code == "no_answer_to_enq":
                self._set_health(HEALTH_DOWN)
            if waiting and payment is not None:
                if event.code == "no_answer_to_enq":
                    outcome = _outcome(states.FAILED, "terminal_unreachable", event.message)
                elif event.code == "frame_rejected":
                    outcome = _outcome(states.FAILED, "frame_rejected")
                else:
                    outcome = _outcome(states.UNKNOWN, "no_ack")
                self._finish(payment, outcome)
        elif isinstance(event, Received):
            self._set_health(HEALTH_UP)
            if waiting and payment is not None and payment.delivered:
                self._finish(payment, self._decode(payment.request, event.payload))
            else:
                self._log.warn("Terminal {terminal} sent {size} bytes while no payment was waiting; ignored",
                               terminal=self.name, size=len(event.payload))
        elif isinstance(event, ReceiveFailed):
            if waiting and payment is not None and payment.delivered:
                self._finish(payment, _outcome(states.UNKNOWN, "malformed_answer", event.message,
                                               reason=event.code))
        elif isinstance(event, AnswerTimeout):
            if waiting and payment is not None:
                self._finish(payment, _outcome(states.UNKNOWN, "answer_timeout"))

    def _finish(self, payment: _Payment, outcome: Outcome) -> None:
        if self._payment is payment:
            self._payment = None
        if not payment.result.called:
            payment.result.callback(outcome)

    def _crashed(self, failure: Failure, payment: _Payment) -> None:
        runner = self._runner
        sent = payment.sending and (runner is None or runner.link.frame_sent)
        self._finish(payment, safety.crashed(failure, self._log, payment.request.payment_id, self.name, sent,
                                             MAY_HAVE_PAID))

    def _done(self, outcome: Outcome, request: PaymentRequest) -> Outcome:
        if outcome.code in _LINK_PROBLEMS:
            self._last_error = outcome.code
        elif outcome.code != "terminal_busy":
            self._last_error = None
        return outcome  # the core logs the payment's end, with every field
