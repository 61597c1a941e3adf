"""The one small interface every terminal driver implements, and the values that cross it.

A driver knows its wire protocol and nothing of clients, journals or WebSockets.  The core hands it a
:class:`PaymentRequest` and a ``before_send`` hook; the driver answers with an :class:`Outcome`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

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


BeforeSend = Callable[[], "Deferred[None]"]


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
