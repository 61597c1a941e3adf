"""The driver contract: the one interface every terminal driver implements, and the values that cross it.

The payment path reads downwards: ``api`` (sessions, commands) -> ``core`` (:mod:`bridge.core.payments`, the
journal, the states) -> this contract -> a driver under ``bridge.terminals``.  A driver knows its wire protocol
and nothing of clients, journals or WebSockets: the core hands it a :class:`PaymentRequest` and a
``before_send`` hook, the driver answers with an :class:`Outcome`; it says how its terminal is with a
:class:`TerminalStatus`.  The daemon (:mod:`bridge.service.daemon`) starts every driver before recovery and stops
it once the payments in flight have ended; a driver never hooks the reactor's shutdown itself.

Adding a terminal family means a codec, a transport and one class that provides :class:`ITerminalDriver`, then
one line in :mod:`bridge.terminals.catalogue` (its option checker and builder) and its configuration check in
:data:`bridge.cli.doctor.TERMINAL_CHECKS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Protocol, Union

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from bridge.core.money import Currency

DEBIT = "debit"
REFUND = "refund"
CARD = "card"
CHEQUE = "cheque"


@dataclass(frozen=True)
class PaymentRequest:
    payment_id: str
    kind: str  # DEBIT or REFUND
    amount: int  # minor units, > 0
    currency: Currency
    method: str = CARD  # CARD or CHEQUE
    #: For a refund of an earlier payment (``payment.refund``): that payment's id, amount and the details its
    #: driver recorded (e.g. a Stripe PaymentIntent id).  None for a plain refund or a debit.
    original: Optional[Mapping[str, Any]] = None


@dataclass(frozen=True)
class Outcome:
    """What a driver reports at the end of a payment.

    ``state`` is one of the final states of :mod:`bridge.core.states`.  ``code`` is a stable reason string
    (``approved``, ``card_declined``, ``cardholder_abandon``, ``terminal_unreachable``, ``link_lost``, ...) and
    ``message`` says it in words a cashier understands.  ``details`` carries what the terminal told
    (``authorisation``, ``card_masked``, ``application``, ``entry_mode``, ``amount_authorised``,
    ``terminal_code``); never a full card number.
    """

    state: str
    code: str
    message: str
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TerminalStatus:
    """What a driver says of its terminal now (:meth:`ITerminalDriver.status`).

    ``state`` is a word a shop's installer reads: ``idle`` or ``busy``, or the driver's word for why the
    terminal cannot pay now (``disconnected``, ``down``, ``offline``, ``error``; ``unknown`` while a driver has
    not heard from its terminal yet).  ``detail`` says it in a sentence.  ``up`` is the driver's own answer to
    "can this terminal take a payment now?": only the driver knows what its words and facts mean (a TCP terminal
    is down after a payment that could not reach it, a serial one when it stops answering the health check).
    ``facts`` are the family's own keys for ``terminal.status`` (``address``, ``device``, ``reader``,
    ``last_error``, ...).
    """

    state: str
    detail: str
    up: bool = True
    facts: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The ``terminal.status`` shape (docs/protocol.md): ``state``, ``detail``, ``up`` and the facts."""
        return {"state": self.state, "detail": self.detail, "up": self.up, **self.facts}


#: ``before_send(details=None)``: journal the payment ``in_progress`` (with ``details`` the driver wants kept,
#: e.g. a provider's own id, so that recovery can find the payment again) before anything reaches the terminal.
BeforeSend = Callable[..., "Deferred[None]"]

#: The name of a driver class's optional attribute: True when its ``pay`` does nothing before ``before_send`` that a
#: crash could leave behind (it only opens a connection to the terminal: no byte of the request, nothing at a
#: provider).  The payment service then calls ``pay`` as soon as the payment is valid, before ``accepted`` is
#: journaled: if the driver calls ``before_send`` within a moment (``payments.ACCEPTED_ALONE_AFTER``), ``accepted``
#: and ``in_progress`` are journaled in one write; otherwise ``accepted`` is written alone and ``before_send``
#: waits for it as well (docs/architecture.md).  If ``accepted`` cannot be journaled, ``before_send`` fails with
#: why and the driver closes without sending.  Drivers without it (a Stripe reader's driver creates a
#: PaymentIntent first) are called once ``accepted`` is on disk.
PAY_WHILE_ACCEPTING = "pay_while_accepting"

#: What :meth:`ITerminalDriver.cancel` returns: words for the cashier, or None when the terminal cannot be told
#: to stop by the bridge (the cashier cancels on the terminal itself).
CancelAnswer = Union[Optional[str], "Deferred[Optional[str]]"]


class ITerminalDriver(Interface):
    name = Attribute("The terminal's name from the configuration, e.g. 'till-1'.")
    kind = Attribute("The driver family, e.g. 'caisse-ap-tcp'.")

    def pay(request: PaymentRequest, before_send: BeforeSend) -> "Deferred[Outcome]":
        """Run one payment on the terminal.

        The driver calls ``before_send()`` exactly once, after the link to the terminal is up and immediately
        before the first byte of the request is written, and writes nothing until the Deferred it returns has
        fired.  If that Deferred fails, nothing is sent and the outcome is ``failed`` with the failure's code.
        The returned Deferred never fails: every problem is an Outcome (``failed`` when the request certainly
        did not reach the terminal, ``unknown`` when it may have).
        """

    def cancel(payment_id: str) -> CancelAnswer:
        """Ask the terminal to cancel the payment now running; what to tell the cashier, or None when this
        terminal cannot be told to stop (the cashier cancels on the terminal).  It must not claim the
        cancellation: the payment ends with what :meth:`pay` reports."""

    def recover(payment_id: str, details: Mapping[str, Any]) -> "Deferred[Optional[Outcome]]":
        """After a restart or for an ``unknown`` payment, ask the provider what became of it (``details`` as
        journaled, e.g. the PaymentIntent id).  None when the provider cannot say (a terminal that keeps no
        record the bridge can read always says None); the payment then stays ``unknown`` until a person
        resolves it."""

    def status() -> TerminalStatus:
        """What the terminal is doing now and whether it can take a payment; read often (status line, status
        page, metrics), so it answers from what the driver already knows, without I/O."""

    def start() -> None:
        """Begin the terminal's own life (open a device, start a health check or a thread pool).  Called once, by
        the daemon, on the reactor thread, before recovery asks :meth:`recover`.  Nothing to do for a terminal
        reached anew for each payment."""

    def stop() -> "Optional[Deferred[None]]":
        """End it, once the payments in flight have ended (the daemon's stop order): close the device, stop the
        timers and threads.  Fires (or returns None) once done.  The daemon alone calls it: a driver does not
        hook the reactor's shutdown itself."""


class TerminalDriver(Protocol):
    """:class:`ITerminalDriver` as mypy reads it, for the code that calls a driver (the registry, the payment
    service, the daemon).  mypy, without the mypy-zope plugin (pyproject.toml), cannot call through a zope
    interface, whose methods are declared without ``self``; this Protocol declares the same attributes and
    methods with it, and mypy checks every driver class against it where the catalogue builds one.
    ``tests/test_contract.py`` checks that the two name the same things."""

    name: str
    kind: str

    def pay(self, request: PaymentRequest, before_send: BeforeSend) -> "Deferred[Outcome]": ...
    def cancel(self, payment_id: str) -> CancelAnswer: ...
    def recover(self, payment_id: str, details: Mapping[str, Any]) -> "Deferred[Optional[Outcome]]": ...
    def status(self) -> TerminalStatus: ...
    def start(self) -> None: ...
    def stop(self) -> "Optional[Deferred[None]]": ...
