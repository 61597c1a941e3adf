"""The one small interface every terminal driver implements, and the values that cross it.

A driver knows its wire protocol and nothing of clients, journals or WebSockets.  The core hands it a
:class:`PaymentRequest` and a ``before_send`` hook; the driver answers with an :class:`Outcome`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

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


#: ``before_send(details=None)``: journal the payment ``in_progress`` (with ``details`` the driver wants kept,
#: e.g. a provider's own id, so that recovery can find the payment again) before anything reaches the terminal.
BeforeSend = Callable[..., "Deferred[None]"]


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

    def status() -> Mapping[str, Any]:
        """A small dict for ``terminal.status``: at least ``{"state": "idle"|"busy"|..., "detail": str}``."""


# Optional driver methods; the core uses them when a driver has them.
#
# ``cancel(payment_id) -> str | Deferred[str]``: ask the terminal to cancel the payment now running; returns
# what to tell the cashier.  It must not claim the cancellation: the payment ends with what ``pay`` reports.
#
# ``recover(payment_id, details) -> Deferred[Outcome | None]``: after a restart or for an ``unknown`` payment,
# ask the provider what became of it (``details`` as journaled, e.g. the PaymentIntent id).  None when the
# provider cannot say; the payment then stays ``unknown`` until a person resolves it.
