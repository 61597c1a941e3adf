"""A Caisse-AP terminal on TCP for the demo and the tests: it answers like a real one, with scripted outcomes.

Like a terminal, it reads bytes until they parse as a whole request (a trailing CR/LF is tolerated), checks
the mandatory tags (``AF=09`` when one is missing or badly formed), the action (``AF=12``) and the currency
(``AF=13``), then answers with every request tag echoed and its own tags added.

What real terminals do where vendors differ (``shared/protocols/caisse-ap-answers.md``) is a vendor profile:

- the amount of an answer that is not an approval: an Ingenico puts zeros there (seen on a Desk/5000 after the
  red button; assumed for its refusals and for Concert V2's MNT), Nepting and PayXpert echo the request's;
- a one-digit CB (``CB0015`` for 0.05, as OCA's module sends it): the specification says 2 to 12 digits, so it
  is a format error (``AF=09``) by default; ``lenient_amount`` accepts it, as Nepting apparently does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, cast

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from bridge.core.money import CURRENCIES
from bridge.core.reactor_types import Clock, DelayedCall, Transport
from bridge.terminals.caisse_ap.codec import (
    ACTION_DEBIT,
    ACTION_REFUND,
    APPLICATION_CHEQUE,
    MANDATORY_TAGS,
    STATUS_DONE,
    STATUS_NOT_DONE,
    AnswerParser,
    MalformedAnswer,
    encode_fields,
)

APPROVE = "approve"
DECLINE = "decline"
ABANDON = "abandon"
NEVER = "never"
OUTCOMES = (APPROVE, DECLINE, ABANDON, NEVER)

#: ISO 4217 numeric codes the simulated terminal accepts: every currency the bridge knows.
SUPPORTED_CURRENCIES = frozenset(cur.numeric for cur in CURRENCIES.values())
SUPPORTED_ACTIONS = frozenset({ACTION_DEBIT, ACTION_REFUND})

#: What the terminal answers to ``garbage``: a length that is not digits, then a byte that is not ASCII.
GARBAGE = b"CZ0040300AE0X10\xfe\r\n"

_FORMATS = {
    "CZ": re.compile(r"\d{4}\Z"),
    "CJ": re.compile(r"\d{12}\Z"),
    "CA": re.compile(r"\d{2}\Z"),
    "CB": re.compile(r"\d{2,12}\Z"),
    "CD": re.compile(r".\Z"),
    "CE": re.compile(r"\d{3}\Z"),
}
_AF_FORMAT_ERROR = "09"
_AF_UNKNOWN_ACTION = "12"
_AF_UNSUPPORTED_CURRENCY = "13"
_AF_OPERATOR_ABANDON = "11"

#: The amount of an answer that is not an approval: ``zeros`` or ``echo`` (the request's).
REFUSED_AMOUNT_ZEROS = "zeros"
REFUSED_AMOUNT_ECHO = "echo"
REFUSED_AMOUNTS = (REFUSED_AMOUNT_ZEROS, REFUSED_AMOUNT_ECHO)
#: Vendor profiles: what each one puts in the amount of an answer that is not an approval.
VENDORS = {"ingenico": REFUSED_AMOUNT_ZEROS, "nepting": REFUSED_AMOUNT_ECHO, "payxpert": REFUSED_AMOUNT_ECHO}
DEFAULT_VENDOR = "ingenico"
_LENIENT_CB = re.compile(r"\d{1,12}\Z")


@dataclass(frozen=True)
class SimulatorScript:
    """How the simulated terminal behaves on every request."""

    outcome: str = APPROVE  # approve | decline | abandon | never (keep silent)
    af: str = "04"  # the AF code of a decline
    delay: float = 0.0  # seconds between the request and the answer
    split: int = 1  # write the answer in this many pieces ...
    split_gap: float = 0.02  # ... this many seconds apart
    keep_open: bool = False  # keep the connection open after answering
    garbage: bool = False  # answer with bytes that are no Caisse-AP message
    cheque: bool = False  # print a cheque: CC=00C, no card tags
    disconnect: bool = False  # drop the connection instead of answering
    vendor: str = DEFAULT_VENDOR  # a key of VENDORS
    refused_amount: str | None = None  # zeros | echo: instead of the vendor's choice
    lenient_amount: bool = False  # accept a one-digit CB (the specification says 2 to 12 digits)

    def __post_init__(self) -> None:
        if self.vendor not in VENDORS:
            raise ValueError(f"vendor must be one of {', '.join(VENDORS)}, not {self.vendor!r}")
        if self.refused_amount is not None and self.refused_amount not in REFUSED_AMOUNTS:
            raise ValueError(f"refused_amount must be one of {', '.join(REFUSED_AMOUNTS)}, not "
                             f"{self.refused_amount!r}")
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}, not {self.outcome!r}")
        if not re.fullmatch(r"\d\d", self.af):
            raise ValueError(f"af must be two digits, not {self.af!r}")
        if self.delay < 0 or self.split_gap < 0:
            raise ValueError("delay and split_gap cannot be negative")
        if self.split < 1:
            raise ValueError("split must be at least 1")

    @property
    def zeros_when_refused(self) -> bool:
        """Whether an answer that is not an approval carries a zero amount (else the request's)."""
        return (self.refused_amount or VENDORS[self.vendor]) == REFUSED_AMOUNT_ZEROS


def answer_fields(
    request: list[tuple[str, str]],
    script: SimulatorScript,
    authorisation: str = "123456",
    currencies: frozenset[str] = SUPPORTED_CURRENCIES,
) -> list[tuple[str, str]] | None:
    """The answer a terminal following ``script`` gives to ``request``, or None when it stays silent."""
    fields = dict(request)
    answer = dict(request)  # a terminal echoes the request's tags
    answer.setdefault("CZ", "0300")

    def refuse(af: str) -> list[tuple[str, str]]:
        answer.update(AE=STATUS_NOT_DONE, AF=af)
        return list(answer.items())

    formats = dict(_FORMATS, CB=_LENIENT_CB) if script.lenient_amount else _FORMATS
    if any(tag not in fields or not formats[tag].match(fields[tag]) for tag in MANDATORY_TAGS):
        return refuse(_AF_FORMAT_ERROR)  # answered at once, the request's tags echoed, no card data
    if fields["CD"] not in SUPPORTED_ACTIONS:
        return refuse(_AF_UNKNOWN_ACTION)
    if fields["CE"] not in currencies:
        return refuse(_AF_UNSUPPORTED_CURRENCY)
    if fields.get("BA") == "1":  # immediate mode: only "request taken into account"
        answer["AE"] = "11"
        return list(answer.items())
    if script.outcome == NEVER:
        return None
    if script.outcome in (DECLINE, ABANDON):
        if script.zeros_when_refused:
            answer["CB"] = "0" * len(fields["CB"])  # nothing was debited (a Desk/5000 after the red button)
        return refuse(script.af if script.outcome == DECLINE else _AF_OPERATOR_ABANDON)
    answer["AE"] = STATUS_DONE
    if script.cheque or fields.get("CC") == APPLICATION_CHEQUE:
        answer["CC"] = APPLICATION_CHEQUE
    else:
        answer.update(CC="001", CI="1", AC=authorisation, AA="497010######1234", AB="2812", AI="A0000000421010")
    return list(answer.items())


class _SimulatedTerminal(Protocol):
    _log = Logger()

    def __init__(self, factory: SimulatorFactory) -> None:
        self._factory = factory
        self._parser = AnswerParser()
        self._received = bytearray()
        self._answered = False
        self._calls: list[DelayedCall] = []
        self._gone: list[Deferred[None]] = []
        self.lost = False

    def connectionMade(self) -> None:
        self._factory.connections.add(self)

    def dataReceived(self, data: bytes) -> None:
        if self._answered:
            return
        self._received += data
        try:
            self._parser.feed(data)
        except MalformedAnswer as error:
            self._log.info("Simulated terminal: malformed request ({reason}), answering AF=09", reason=error.reason)
            self._answered = True
            self._reply(encode_fields([("CZ", "0300"), ("AE", STATUS_NOT_DONE), ("AF", _AF_FORMAT_ERROR)]))
            return
        if self._parser.complete:
            self._answered = True
            self._factory.record(bytes(self._received).rstrip(b"\r\n"))
            self._respond(self._parser.fields)

    def _respond(self, request: list[tuple[str, str]]) -> None:
        script = self._factory.script
        if script.disconnect:
            self._later(script.delay, cast(Transport, self.transport).loseConnection)
            return
        if script.garbage:
            self._reply(GARBAGE)
            return
        authorisation = f"{100000 + len(self._factory.requests):06d}"
        answer = answer_fields(request, script, authorisation, self._factory.currencies)
        if answer is None:
            self._log.info("Simulated terminal: request received, staying silent")
            return
        reply = dict(answer)
        self._log.info(
            "Simulated terminal: answering AE={ae} AF={af} in {delay} s",
            ae=reply["AE"], af=reply.get("AF", "-"), delay=script.delay,
        )
        self._reply(encode_fields(answer))

    def _reply(self, answer: bytes) -> None:
        script = self._factory.script
        size = -(-len(answer) // script.split)  # ceiling division
        pieces = [answer[i : i + size] for i in range(0, len(answer), size)]
        for index, piece in enumerate(pieces):
            self._later(script.delay + index * script.split_gap, cast(Transport, self.transport).write, piece)
        if not script.keep_open:
            self._later(script.delay + (len(pieces) - 1) * script.split_gap,
                        cast(Transport, self.transport).loseConnection)

    def _later(self, delay: float, function: Callable[..., Any], *args: Any) -> None:
        self._calls.append(self._factory.clock.callLater(delay, function, *args))

    def drop(self) -> Deferred[None]:
        """Close the connection now; the Deferred fires once it is gone."""
        if self.lost:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._gone.append(waiter)
        cast(Transport, self.transport).loseConnection()
        return waiter

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True
        self._factory.connections.discard(self)
        for call in self._calls:
            if call.active():
                call.cancel()
        waiters, self._gone = self._gone, []
        for waiter in waiters:
            waiter.callback(None)


class SimulatorFactory(Factory):
    """Makes simulated terminals; keeps every complete request received in :attr:`requests`."""

    noisy = False

    def __init__(
        self,
        clock: Clock,
        script: SimulatorScript = SimulatorScript(),
        record_path: str | None = None,
        currencies: frozenset[str] = SUPPORTED_CURRENCIES,
    ) -> None:
        self.clock = clock
        self.script = script
        self.record_path = record_path
        self.currencies = currencies
        self.requests: list[bytes] = []
        self.connections: set[_SimulatedTerminal] = set()

    def buildProtocol(self, addr: Any) -> _SimulatedTerminal:
        return _SimulatedTerminal(self)

    def record(self, request: bytes) -> None:
        self.requests.append(request)
        if self.record_path:
            with open(self.record_path, "ab") as file:
                file.write(request + b"\n")

    def drop_connections(self) -> Deferred[Any]:
        """Close every open connection; fires once all are gone (tests use it to leave a clean reactor)."""
        return gatherResults([conn.drop() for conn in list(self.connections)])
