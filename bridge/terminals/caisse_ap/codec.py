"""Caisse-AP (Concert V3) messages: bytes <-> fields, and an answer -> an :class:`Outcome`.  No I/O.

A message is a run of ``TAG LLL VALUE`` fields (two capital letters, three digits, 1..999 printable ASCII
characters), ``CZ`` first, each tag at most once, with no terminator on the wire.  The reader therefore cannot
know from a single read that an answer is over; :class:`AnswerParser` says whether the bytes so far are a whole
message, still a prefix of one, or can never become one.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping

from bridge.core import states
from bridge.core.money import format_major, validate_amount
from bridge.core.contract import CHEQUE, DEBIT, REFUND, Outcome, PaymentRequest

#: No answer from a terminal may be larger than this (a ticket is under 1 KiB; the cap guards memory).
MAX_MESSAGE_SIZE = 64 * 1024

#: A request without every one of these is refused by the terminal with AE=01 AF=09.
MANDATORY_TAGS = ("CZ", "CJ", "CA", "CB", "CD", "CE")

#: CD values: the action asked for.
ACTION_DEBIT = "0"
ACTION_REFUND = "1"
ACTIONS = {DEBIT: ACTION_DEBIT, REFUND: ACTION_REFUND}

#: AE values.
STATUS_DONE = "10"
STATUS_NOT_DONE = "01"

#: CC value that makes the terminal print a cheque instead of reading a card.
APPLICATION_CHEQUE = "00C"

#: The fixed-width identity fields the cash register sends: option name -> (tag, number of digits).
IDENTITY_FIELDS = {
    "protocol_version": ("CZ", 4),
    "cash_register_id": ("CJ", 12),
    "pos_number": ("CA", 2),
}

_TAG = re.compile(r"[A-Z]{2}\Z")
_LINE_END = b"\r\n"


class MalformedAnswer(Exception):
    """Bytes that are not, and can never become, a Caisse-AP message.  ``reason`` says why, in words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _printable(value: str) -> bool:
    return all(" " <= ch <= "~" for ch in value)


def encode_fields(fields: Iterable[tuple[str, str]]) -> bytes:
    """``[("CZ", "0300"), ...]`` -> ``b"CZ0040300..."``.  Raises ``ValueError`` for what no terminal accepts."""
    out = []
    for tag, value in fields:
        if not _TAG.match(tag):
            raise ValueError(f"tag {tag!r} is not two capital letters")
        if not 1 <= len(value) <= 999:
            raise ValueError(f"value of {tag} must be 1 to 999 characters, not {len(value)}")
        if not _printable(value):
            raise ValueError(f"value of {tag} is not printable ASCII")
        out.append(f"{tag}{len(value):03d}{value}")
    return "".join(out).encode("ascii")


def identity_problem(name: str, value: str) -> str | None:
    """Why ``value`` cannot be sent as identity field ``name`` (see :data:`IDENTITY_FIELDS`), or None."""
    _tag, width = IDENTITY_FIELDS[name]
    if len(value) != width or not value.isascii() or not value.isdigit():
        return f"must be exactly {width} digits"
    return None


def checked_identity(pos_number: str, protocol_version: str, cash_register_id: str) -> dict[str, str]:
    """The identity fields a driver sends with every request, or ValueError naming the bad one."""
    identity = {"pos_number": pos_number, "protocol_version": protocol_version, "cash_register_id": cash_register_id}
    for option, value in identity.items():
        problem = identity_problem(option, value)
        if problem:
            raise ValueError(f"{option} {value!r} {problem}")
    return identity


def encode_request(
    request: PaymentRequest,
    pos_number: str = "01",
    protocol_version: str = "0300",
    cash_register_id: str = "012345678901",
) -> bytes:
    """The bytes that ask the terminal for ``request``.

    Only the tags needed are sent: BF (partial payment) breaks newer Ingenico software.  Raises ``BridgeError``
    ``invalid_amount`` for an amount a terminal cannot carry and ``ValueError`` for a bad identity field.
    """
    identity = {"protocol_version": protocol_version, "cash_register_id": cash_register_id, "pos_number": pos_number}
    for name, value in identity.items():
        problem = identity_problem(name, value)
        if problem:
            raise ValueError(f"{name} {value!r} {problem}")
    if request.kind not in ACTIONS:
        raise ValueError(f"unknown payment kind {request.kind!r}")
    amount = validate_amount(request.amount)
    fields = [
        ("CZ", protocol_version),
        ("CJ", cash_register_id),
        ("CA", pos_number),
        ("CE", request.currency.numeric),
        ("CD", ACTIONS[request.kind]),
        # At least two digits: a one-digit CB is below the protocol's minimum size.
        ("CB", f"{amount:02d}"),
    ]
    if request.method == CHEQUE:
        fields.append(("CC", APPLICATION_CHEQUE))
    return encode_fields(fields)


#: Any byte that may not appear in a message: not printable ASCII, and not the CR/LF some terminals append.
_NOT_PRINTABLE = re.compile(rb"[^\x20-\x7e\r\n]")


class AnswerParser:
    """Reads one message from bytes fed in any pieces.

    After each :meth:`feed`, :attr:`complete` says whether everything fed so far is a whole message (optionally
    followed by CR/LF, which some terminals send).  ``False`` means "a prefix: need more bytes".  Bytes that can
    never become a message raise :class:`MalformedAnswer` from :meth:`feed`, and every later feed raises it again.
    """

    def __init__(self, max_size: int = MAX_MESSAGE_SIZE) -> None:
        self._max_size = max_size
        self._buffer = bytearray()
        self._start = 0  # offset of the first byte of the field being read
        self._fields: list[tuple[str, str]] = []
        self._tags: set[str] = set()  # the tags read, for "appears twice"
        self._line_end = False  # a CR or LF was seen: only CR/LF may follow
        self._error: MalformedAnswer | None = None

    @property
    def complete(self) -> bool:
        return self._error is None and bool(self._fields) and (self._line_end or self._start == len(self._buffer))

    @property
    def fields(self) -> list[tuple[str, str]]:
        """The complete fields read so far, in wire order."""
        return list(self._fields)

    def as_dict(self) -> dict[str, str]:
        return dict(self._fields)

    def feed(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        try:
            self._feed(data)
        except MalformedAnswer as error:
            self._error = error
            raise

    def _feed(self, data: bytes) -> None:
        offset = len(self._buffer)
        if offset + len(data) > self._max_size:
            raise MalformedAnswer(f"the message is larger than {self._max_size} bytes")
        bad = _NOT_PRINTABLE.search(data)
        if bad is not None:
            raise MalformedAnswer(f"byte 0x{bad.group()[0]:02x} at offset {offset + bad.start()} is not printable "
                                  "ASCII")
        self._buffer += data
        while self._read_field():
            pass

    def _read_field(self) -> bool:
        """Read one more field if all of it is here; True if one was read."""
        buf, start = self._buffer, self._start
        available = len(buf) - start
        if available == 0:
            return False
        if self._line_end or buf[start] in _LINE_END:
            if not self._fields:
                raise MalformedAnswer("the message starts with a line end instead of the CZ field")
            stray = bytes(buf[start:]).strip(_LINE_END)
            if stray:
                raise MalformedAnswer(f"data after the line end at offset {start}")
            self._line_end = True
            return False
        tag = bytes(buf[start : start + 2]).decode("ascii")
        if not tag.isalpha() or not tag.isupper():
            raise MalformedAnswer(f"bad tag {tag!r} at offset {start}: a tag is two capital letters")
        if len(tag) < 2:
            return False
        if not self._fields and tag != "CZ":
            raise MalformedAnswer(f"the first field is {tag}, not CZ")
        if tag in self._tags:
            raise MalformedAnswer(f"tag {tag} appears twice")
        digits = bytes(buf[start + 2 : start + 5]).decode("ascii")
        if not digits.isdigit() and digits:
            raise MalformedAnswer(f"length {digits!r} of field {tag} is not three digits")
        if len(digits) < 3:
            return False
        length = int(digits)
        if length == 0:
            raise MalformedAnswer(f"field {tag} has length 000")
        if available < 5 + length:
            return False
        raw = bytes(buf[start + 5 : start + 5 + length])
        # _feed let in printable ASCII and CR/LF only: CR/LF are all a value must still be checked for
        if b"\r" in raw or b"\n" in raw:
            raise MalformedAnswer(f"value of field {tag} contains a line end")
        value = raw.decode("ascii")
        self._fields.append((tag, value))
        self._tags.add(tag)
        self._start = start + 5 + length
        return True


def parse_message(data: bytes, max_size: int = MAX_MESSAGE_SIZE) -> list[tuple[str, str]]:
    """The fields of one whole message, or :class:`MalformedAnswer` (also when ``data`` stops mid-field)."""
    parser = AnswerParser(max_size)
    parser.feed(data)
    if not parser.complete:
        raise MalformedAnswer("the message is incomplete")
    return parser.fields


# --- Answer -> Outcome ---------------------------------------------------------------------------------------

#: CC (application used), all three characters (table d3 of the notes).
APPLICATIONS = {
    "000": "Unspecified",
    "001": "CB / Visa / Mastercard (chip)",
    "002": "American Express (chip)",
    "003": "CB Enseigne",
    "004": "Cetelem",
    "005": "Cofinoga",
    "006": "Diners",
    "007": "Pass",
    "008": "Franfinance",
    "009": "JCB",
    "00A": "Banque Accord",
    "00B": "CB / Visa / Mastercard (contactless)",
    "00C": "Cheque",
    "00D": "American Express (contactless)",
    "00E": "CONECS meal voucher (chip)",
    "00F": "Dynamic currency conversion",
    "00G": "QuickPass / UnionPay",
    "00I": "CPEI",
    "00S": "Store card",
    "00U": "UnionPay",
    "00V": "ANCV holiday voucher",
    "10E": "CONECS meal voucher (contactless)",
    "101": "CB distance selling",
    "201": "Quasi-cash",
    "301": "PLBS",
    "30F": "PLBS with currency conversion",
    "401": "Optalion",
    "501": "Cash-Agence",
    "601": "Payment in instalments (PNF)",
    "602": "Payment in 3 instalments (P3F)",
    "701": "PPFCA",
}

#: CI (how the card was read).
ENTRY_MODES = {"0": "unspecified", "1": "contact", "2": "contactless", "3": "magstripe", "4": "manual"}

_WHAT = {DEBIT: "payment", REFUND: "refund"}

_CHECK_RECEIPT = "Check the terminal's receipt before trying again."

#: AF[:2] when AE=01 -> (state, code, message).
_NOT_DONE: dict[str, tuple[str, str, str]] = {
    "02": (states.DECLINED, "call_issuer", "The bank asks for a phone call to authorise this card. Nothing was charged."),
    "04": (states.DECLINED, "card_declined", "The card was declined by the bank."),
    "05": (states.DECLINED, "card_forbidden", "This card may not be used for this {what}."),
    "06": (states.CANCELLED, "cardholder_abandon", "The customer cancelled on the terminal."),
    "07": (states.CANCELLED, "not_completed", "The {what} was not completed on the terminal. Nothing was charged."),
    "08": (
        states.CANCELLED,
        "input_timeout",
        "The terminal waited too long for the card or the PIN. Nothing was charged.",
    ),
    "09": (
        states.FAILED,
        "terminal_rejected_format",
        "The terminal did not understand the request. Nothing was charged; check the terminal's settings.",
    ),
    "10": (
        states.FAILED,
        "terminal_rejected_selection",
        "The terminal could not select a payment application. Nothing was charged.",
    ),
    "11": (states.CANCELLED, "operator_abandon", "The {what} was cancelled on the terminal."),
    "12": (
        states.FAILED,
        "terminal_rejected_action",
        "The terminal does not support this kind of operation. Nothing was charged.",
    ),
    "13": (states.FAILED, "unsupported_currency", "The terminal does not accept this currency. Nothing was charged."),
}
_REFUSED = (states.DECLINED, "terminal_refused", "The terminal refused the {what}. Nothing was charged.")
#: A cheque the terminal did not print or accept: no bank was asked (an Ingenico with its cheque printer answers
#: AF=04 whatever the cause: cancelled with the red button, or the cheque inserted the wrong way).
CHEQUE_REFUSED = (states.DECLINED, "cheque_refused",
                  "The terminal refused the cheque (cancelled on the terminal, or the cheque could not be printed). "
                  "Nothing was paid.")


def mask_card_number(text: str) -> str:
    """Hide every digit of a card number but the first six and the last four, whatever the terminal sent."""
    digits = sum(ch.isdigit() for ch in text)
    out, seen = [], 0
    for ch in text:
        if ch.isdigit():
            seen += 1
            if 6 < seen <= digits - 4:
                ch = "#"
        out.append(ch)
    return "".join(out)


def _terminal_code(fields: Mapping[str, str]) -> str:
    return " ".join(f"{tag}={fields[tag]}" for tag in ("AE", "AF") if tag in fields)


def _answer_details(fields: Mapping[str, str]) -> dict[str, object]:
    details: dict[str, object] = {"terminal_code": _terminal_code(fields)}
    if "AC" in fields:
        details["authorisation"] = fields["AC"]
    if "AA" in fields:
        details["card_masked"] = mask_card_number(fields["AA"])
    if "CC" in fields:
        code = fields["CC"]
        details["application"] = APPLICATIONS.get(code, "Other")
        details["application_code"] = code
    if "CI" in fields:
        details["entry_mode"] = ENTRY_MODES.get(fields["CI"], "other")
    amount = fields.get("CB", "")
    if amount.isascii() and amount.isdigit():
        details["amount_authorised"] = int(amount)
    return details


def outcome_from_answer(request: PaymentRequest, fields: Mapping[str, str], pos_number: str = "01") -> Outcome:
    """What the terminal's answer means for ``request`` (sent with ``pos_number``).

    Echoes are checked only on success: a cancelled transaction carries no real amount (CB zeros on an Ingenico,
    the request's amount elsewhere), so an answer that is not an approval is never judged by its amount.  An approval
    for another amount than asked (partial authorisation) is ``unknown`` with ``amount_mismatch``: money may
    have moved, but not the amount the till expects, so a person has to look.
    """
    what = _WHAT.get(request.kind, "payment")
    status = fields.get("AE")
    details = _answer_details(fields)
    if status == STATUS_NOT_DONE:
        reason = fields.get("AF", "")[:2]
        if reason == "01":  # "authorised" with "not done": contradictory, so nobody can say no money moved.
            return Outcome(
                states.UNKNOWN,
                "terminal_answer_unclear",
                f"The terminal gave a contradictory answer. The {what} may have gone through. {_CHECK_RECEIPT}",
                details,
            )
        state, code, message = _NOT_DONE.get(reason, _REFUSED)
        if request.method == CHEQUE and state == states.DECLINED:
            state, code, message = CHEQUE_REFUSED
        # The amount of an answer that is not an approval means nothing (zeros after a cancel on some terminals,
        # the request's amount on others): it is neither checked nor recorded.
        details.pop("amount_authorised", None)
        return Outcome(state, code, message.format(what=what), details)
    if status != STATUS_DONE:
        return Outcome(
            states.UNKNOWN,
            "terminal_answer_unclear",
            f"The terminal's answer could not be understood. The {what} may have gone through. {_CHECK_RECEIPT}",
            details,
        )
    expected = {"CA": pos_number, "CD": ACTIONS.get(request.kind), "CE": request.currency.numeric}
    if any(fields.get(tag) != value for tag, value in expected.items()) or "amount_authorised" not in details:
        return Outcome(
            states.UNKNOWN,
            "answer_mismatch",
            f"The terminal approved something that does not match this {what}. {_CHECK_RECEIPT}",
            details,
        )
    authorised = int(fields["CB"])
    if authorised != request.amount:
        cur = request.currency
        return Outcome(
            states.UNKNOWN,
            "amount_mismatch",
            f"The terminal approved {format_major(authorised, cur)} {cur.code} instead of "
            f"{format_major(request.amount, cur)} {cur.code}. Check the terminal's receipt and settle the "
            "difference with the customer.",
            details,
        )
    return Outcome(states.APPROVED, "approved", f"The {what} was approved.", details)
