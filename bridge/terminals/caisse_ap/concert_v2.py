"""Concert V2 "E+" payloads (``protocol = concert-v2``), for terminals too old for Caisse-AP TLV.  No I/O.

Fixed-width ASCII, carried inside the link layer's STX..ETX frame:

- request, 34 characters: POS number (2), amount in minor units (8), answer flag (1: ``0`` short answer,
  ``1`` with a 55-character report), mode (1: ``1`` card, ``C`` cheque), type (1: ``0`` debit, ``1`` credit),
  currency ISO 4217 numeric (3), private data (10 spaces), delay (``A010``: answer at the end of the transaction),
  authorisation (``B010``: the terminal decides whether to go online);
- answer, 25 or 80 characters: POS number (2), status (1: ``0`` accepted, ``7`` refused), amount (8), mode (1),
  [report (55)], currency (3), private data (10).

The bridge asks for the short answer: the long one's report carries the full card number, which the bridge has
no use for and must not hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from bridge.core import states
from bridge.core.money import format_major, validate_amount
from bridge.errors import BridgeError
from bridge.core.contract import CHEQUE, DEBIT, REFUND, Outcome, PaymentRequest
from bridge.terminals.caisse_ap.codec import MalformedAnswer

REQUEST_SIZE = 34
SHORT_ANSWER_SIZE = 25
LONG_ANSWER_SIZE = 80
REPORT_SIZE = 55
MAX_AMOUNT = 99_999_999

ANSWER_SHORT = "0"
ANSWER_WITH_REPORT = "1"
MODE_CARD = "1"
MODE_CHEQUE = "C"
TYPE_DEBIT = "0"
TYPE_CREDIT = "1"
TYPES = {DEBIT: TYPE_DEBIT, REFUND: TYPE_CREDIT}
DELAY_AT_END = "A010"
AUTHORISATION_TERMINAL_DECIDES = "B010"
PRIVATE_BLANK = " " * 10

STATUS_ACCEPTED = "0"
STATUS_REFUSED = "7"
STATUS_NOT_VERIFIED = "9"

#: The mode character in an answer: which application took the payment.
APPLICATIONS = {
    "1": "Card",
    "C": "Cheque",
    "2": "American Express",
    "3": "Cetelem",
    "5": "Cofinoga",
    "6": "Diners",
    "8": "Franfinance",
    "9": "JCB",
    "A": "Banque Accord",
    "O": "Moneo",
    "U": "UnionPay",
    "F": "Fintrax",
    "0": "Other",
}

_WHAT = {DEBIT: "payment", REFUND: "refund"}
_CHECK_RECEIPT = "Check the terminal's receipt before trying again."


@dataclass(frozen=True)
class V2Request:
    pos_number: str
    amount: int
    answer_flag: str
    mode: str
    type: str
    currency: str
    private: str
    delay: str
    authorisation: str


@dataclass(frozen=True)
class V2Answer:
    pos_number: str
    status: str
    amount: Optional[int]  # None when a terminal's refusal carries no number there
    mode: str
    currency: str
    private: str
    has_report: bool  # the report itself is dropped on decoding: it holds the full card number


def _digits(text: str, width: int) -> bool:
    return len(text) == width and text.isascii() and text.isdigit()


def encode_request(request: PaymentRequest, pos_number: str = "01") -> bytes:
    """The 34 bytes asking the terminal for ``request``.

    Raises ``BridgeError`` ``invalid_amount`` for an amount over 8 digits and ``ValueError`` for what the
    configuration should have caught (POS number, payment kind).
    """
    if not _digits(pos_number, 2):
        raise ValueError(f"pos_number {pos_number!r} must be exactly 2 digits")
    if request.kind not in TYPES:
        raise ValueError(f"unknown payment kind {request.kind!r}")
    amount = validate_amount(request.amount)
    if amount > MAX_AMOUNT:
        cur = request.currency
        raise BridgeError(
            "invalid_amount",
            f"This terminal takes at most {format_major(MAX_AMOUNT, cur)} {cur.code} in one payment.",
        )
    text = (
        pos_number
        + f"{amount:08d}"
        + ANSWER_SHORT
        + (MODE_CHEQUE if request.method == CHEQUE else MODE_CARD)
        + TYPES[request.kind]
        + request.currency.numeric
        + PRIVATE_BLANK
        + DELAY_AT_END
        + AUTHORISATION_TERMINAL_DECIDES
    )
    assert len(text) == REQUEST_SIZE
    return text.encode("ascii")


def _text(payload: bytes) -> str:
    try:
        text = payload.decode("ascii")
    except UnicodeDecodeError:
        raise MalformedAnswer("the message is not ASCII") from None
    if not text.isprintable():
        raise MalformedAnswer("the message contains control characters")
    return text


def decode_request(payload: bytes) -> V2Request:
    """A request as a terminal reads it (the simulator's side).  Raises :class:`MalformedAnswer`."""
    text = _text(payload)
    if len(text) != REQUEST_SIZE:
        raise MalformedAnswer(f"a Concert V2 request is {REQUEST_SIZE} characters, not {len(text)}")
    if not (_digits(text[0:2], 2) and _digits(text[2:10], 8) and _digits(text[13:16], 3)):
        raise MalformedAnswer("the POS number, amount or currency is not digits")
    return V2Request(
        pos_number=text[0:2], amount=int(text[2:10]), answer_flag=text[10], mode=text[11], type=text[12],
        currency=text[13:16], private=text[16:26], delay=text[26:30], authorisation=text[30:34],
    )


def encode_answer(
    pos_number: str, status: str, amount: int, mode: str, currency: str, private: str = PRIVATE_BLANK,
    report: Optional[str] = None,
) -> bytes:
    """An answer as a terminal writes it (the simulator's side)."""
    if report is not None and len(report) != REPORT_SIZE:
        raise ValueError(f"the report is {REPORT_SIZE} characters")
    text = pos_number + status + f"{amount:08d}" + mode + (report or "") + currency + private
    if len(text) not in (SHORT_ANSWER_SIZE, LONG_ANSWER_SIZE):
        raise ValueError(f"an answer is {SHORT_ANSWER_SIZE} or {LONG_ANSWER_SIZE} characters, not {len(text)}")
    return text.encode("ascii")


def decode_answer(payload: bytes) -> V2Answer:
    """The fields of a terminal's answer.  Raises :class:`MalformedAnswer` with the reason in words."""
    text = _text(payload)
    if len(text) == SHORT_ANSWER_SIZE:
        tail, has_report = text[12:], False
    elif len(text) == LONG_ANSWER_SIZE:
        tail, has_report = text[12 + REPORT_SIZE:], True
    else:
        raise MalformedAnswer(
            f"a Concert V2 answer is {SHORT_ANSWER_SIZE} or {LONG_ANSWER_SIZE} characters, not {len(text)}"
        )
    pos_number, status, amount, mode = text[0:2], text[2], text[3:11], text[11]
    currency, private = tail[0:3], tail[3:13]
    if not _digits(pos_number, 2):
        raise MalformedAnswer(f"the POS number {pos_number!r} is not two digits")
    # The amount is only read, never required: an answer that is not an approval may carry zeros, the
    # request's amount or anything else (what vendors do differs), and must still be understood as a refusal.
    if status == STATUS_ACCEPTED and not _digits(amount, 8):
        raise MalformedAnswer(f"the amount {amount!r} is not eight digits")
    if status == STATUS_ACCEPTED and not _digits(currency, 3):
        raise MalformedAnswer(f"the currency {currency!r} is not three digits")
    return V2Answer(pos_number, status, int(amount) if _digits(amount, 8) else None, mode, currency, private,
                    has_report)


def outcome_from_answer(request: PaymentRequest, answer: V2Answer, pos_number: str = "01") -> Outcome:
    """What the terminal's answer means for ``request``.  Only ``0`` with matching echoes is an approval."""
    what = _WHAT.get(request.kind, "payment")
    details: dict[str, object] = {
        "terminal_code": f"status={answer.status}",
        "application": APPLICATIONS.get(answer.mode, "Other"),
    }
    if answer.private.strip():
        details["terminal_reference"] = answer.private.strip()
    if answer.status == STATUS_REFUSED:  # judged by its status alone: its amount means nothing
        if request.method == CHEQUE:
            return Outcome(states.DECLINED, "cheque_refused",
                           "The terminal refused the cheque (cancelled on the terminal, or the cheque could not be "
                           "printed). Nothing was paid.", details)
        return Outcome(
            states.DECLINED,
            "terminal_refused",
            f"The terminal refused the {what}, or it was cancelled on the terminal. Nothing was charged.",
            details,
        )
    if answer.status == STATUS_ACCEPTED and answer.amount is not None:
        details["amount_authorised"] = answer.amount
    if answer.status != STATUS_ACCEPTED:  # 9 "not verified" included: nobody says no money moved
        return Outcome(
            states.UNKNOWN,
            "terminal_answer_unclear",
            f"The terminal could not confirm the {what} (status {answer.status!r}). It may have gone through. "
            f"{_CHECK_RECEIPT}",
            details,
        )
    if answer.pos_number != pos_number or answer.currency != request.currency.numeric or answer.amount is None:
        return Outcome(
            states.UNKNOWN,
            "answer_mismatch",
            f"The terminal approved something that does not match this {what}. {_CHECK_RECEIPT}",
            details,
        )
    if answer.amount != request.amount:
        cur = request.currency
        return Outcome(
            states.UNKNOWN,
            "amount_mismatch",
            f"The terminal approved {format_major(answer.amount, cur)} {cur.code} instead of "
            f"{format_major(request.amount, cur)} {cur.code}. Check the terminal's receipt and settle the "
            "difference with the customer.",
            details,
        )
    return Outcome(states.APPROVED, "approved", f"The {what} was approved.", details)
