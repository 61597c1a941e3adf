"""The parsers that read outside input, as fuzz targets (no tests here), and a small mutation fuzzer.

Each target takes bytes and raises :class:`Crash` (or any other exception) when the parser misbehaved: an
exception that is not its documented refusal, an answer that is not the documented error, a reply that cannot be
sent.  ``tests/test_fuzz.py`` runs them under hypothesis (bounded, in ``make test``) and ``make fuzz`` runs the
mutation fuzzer below for a million inputs per target (``python -m tests.test_fuzz --inputs N``).

Targets:

- ``session``: one WebSocket text message into a logged-in :class:`~bridge.api.session.Session`, wired as the
  WebSocket server wires it (the reply is serialised, so an unencodable reply shows); half the inputs are signed
  with the client's secret, so that they get past authentication into the ops;
- ``caisse_ap_tlv``: a terminal's answer into the Caisse-AP ``AnswerParser`` (in random pieces), then, when
  complete, into ``outcome_from_answer``;
- ``concert_link``: bytes from a terminal into the Concert link layer, while it sends a request and waits for
  the answer;
- ``stripe``: a Stripe API answer (JSON) into the Stripe driver's parsing of PaymentIntents, readers, reader
  actions and refunds;
- ``odoo_pending``: the body of Odoo's /pending answer into the uplink's parser.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from typing import Any, Callable, Iterator

from twisted.internet.task import Clock

NOW = 1_700_000_000


class Crash(Exception):
    """The target misbehaved on this input."""


# -- session --------------------------------------------------------------------------------------------------

class SessionTarget:
    """A logged-in session over a real journal (on /dev/shm when there is one: the fsyncs are not the point)."""

    #: Inputs per fresh bridge: the replay window and the journal grow with every command.
    RENEW_EVERY = 20_000

    def __init__(self) -> None:
        self._count = 0
        self._dir: Any = None
        self._setup()

    def _setup(self) -> None:
        from bridge.api import signing
        from bridge.api.session import Bridge, Session
        from bridge.core.journal import Journal
        from bridge.core.payments import PaymentService
        from bridge.core.registry import TerminalRegistry
        from tests.support import RecordingDriver, add_test_client, load_config, write_config

        if self._dir is not None:
            self.journal.close()
            self._dir.cleanup()
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self._dir = tempfile.TemporaryDirectory(dir=base)
        path = write_config(self._dir.name, {"till-1": "127.0.0.1:9"})
        self.client = add_test_client(path, "pos", rights=("pay", "read", "refund", "resolve"))
        config = load_config(path, messages_per_second=10_000_000)
        self.clock = Clock()
        self.clock.advance(NOW)
        self.journal = Journal.open(os.path.join(self._dir.name, "j.sqlite3"), threaded=False)
        self.driver = RecordingDriver("till-1")
        payments = PaymentService(self.journal, TerminalRegistry([self.driver]), self.clock)
        self.bridge = Bridge(config, payments, self.clock, fingerprint="AA")
        self.replies: list[bytes] = []
        self.session = Session(self.bridge, lambda m: None, peer="fuzz", send_bytes=self.replies.append)
        self._signing = signing
        hello = signing.signed({"id": "hello-0", "op": "hello", "ts": NOW, "args": {"client": self.client["client_id"]}},
                               self.client["secret_in"])
        self.session.message_received(json.dumps(hello))
        if b'"ok":true' not in self.replies[-1]:
            raise RuntimeError(f"the fuzz session could not log in: {self.replies[-1]!r}")

    def sign(self, data: bytes) -> bytes:
        """``data`` as a signed command when it is a JSON object (so it gets past authentication)."""
        try:
            message = json.loads(data)
        except (ValueError, RecursionError):
            return data
        if not isinstance(message, dict):
            return data
        try:
            return json.dumps(self._signing.signed(message, self.client["secret_in"])).encode()
        except (TypeError, ValueError, RecursionError):
            return data

    def __call__(self, data: bytes) -> None:
        self._count += 1
        if self._count % self.RENEW_EVERY == 0:
            self._setup()
        self.replies.clear()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return  # the WebSocket server answers bad_json itself (tests/test_session.py)
        self.session.message_received(text)
        for _, run in list(self.driver.runs):
            if not run.called:  # end what reached the terminal, so that the next payment finds it free
                from tests.support import APPROVED
                run.callback(APPROVED)
        self.driver.runs.clear()
        replies = [json.loads(r.decode("utf-8")) for r in self.replies]
        answers = [r for r in replies if "re" in r]
        if len(answers) != 1:
            raise Crash(f"{len(answers)} replies")
        error = answers[0].get("error") or {}
        if error.get("code") == "internal_error":
            raise Crash("internal_error")


SESSION_SEEDS = [
    json.dumps(m).encode() for m in (
        {"id": "c1", "op": "payment.start", "ts": NOW, "args": {"terminal": "till-1", "amount": 1234, "currency": "EUR"}},
        {"id": "c2", "op": "payment.start", "ts": NOW,
         "args": {"terminal": "till-1", "amount": 1, "currency": "EUR", "kind": "refund", "method": "cheque"}},
        {"id": "c3", "op": "payment.get", "ts": NOW, "args": {"payment_id": "pay_x"}},
        {"id": "c4", "op": "payment.get", "ts": NOW, "args": {"command_id": "c1"}},
        {"id": "c5", "op": "payment.list", "ts": NOW, "args": {"limit": 5, "since": 0, "cursor": "1.5|pay_x"}},
        {"id": "c6", "op": "payment.cancel", "ts": NOW, "args": {"payment_id": "pay_x"}},
        {"id": "c7", "op": "payment.refund", "ts": NOW, "args": {"payment_id": "pay_x", "amount": 5}},
        {"id": "c8", "op": "payment.resolve", "ts": NOW,
         "args": {"payment_id": "pay_x", "outcome": "approved", "note": "receipt", "authorisation": "123"}},
        {"id": "c9", "op": "events.resume", "ts": NOW, "args": {"after": 0}},
        {"id": "c10", "op": "events.ack", "ts": NOW, "args": {"seq": 1}},
        {"id": "c11", "op": "terminal.status", "ts": NOW, "args": {"terminal": "till-1"}},
        {"id": "c12", "op": "terminal.list", "ts": NOW},
        {"id": "c13", "op": "bridge.info", "ts": NOW, "args": {}},
        {"id": "c14", "op": "hello", "ts": NOW, "args": {"client": "cl_pos"}},
    )
]


# -- Caisse-AP TLV answers ------------------------------------------------------------------------------------

def _caisse_request() -> Any:
    from bridge.core.money import currency
    from bridge.core.contract import PaymentRequest

    return PaymentRequest(payment_id="pay_fuzz", kind="debit", amount=1234, currency=currency("EUR"))


def caisse_ap_tlv(data: bytes) -> None:
    from bridge.terminals.caisse_ap.codec import AnswerParser, MalformedAnswer, outcome_from_answer

    parser = AnswerParser()
    rnd = random.Random(len(data))
    position = 0
    try:
        while position < len(data) and not parser.complete:
            step = rnd.randint(1, 16)
            parser.feed(data[position:position + step])
            position += step
    except MalformedAnswer:
        return
    if parser.complete:
        outcome = outcome_from_answer(_caisse_request(), parser.as_dict())
        if outcome.state == "approved" and parser.as_dict().get("AE") != "10":
            raise Crash("approved without AE=10")


def _caisse_seeds() -> list[bytes]:
    from bridge.terminals.caisse_ap.codec import encode_fields

    approved = [("CZ", "0300"), ("CJ", "012345678901234567890123"), ("CA", "01"), ("CB", "1234"), ("CD", "0"),
                ("CE", "978"), ("AE", "10"), ("AA", "100001"), ("AC", "497010######1234"), ("AF", "00")]
    declined = [("CZ", "0300"), ("CA", "01"), ("AE", "01"), ("AF", "05"), ("CB", "1234"), ("CE", "978")]
    return [encode_fields(approved), encode_fields(declined), encode_fields(approved[:4])]


# -- Concert link layer ---------------------------------------------------------------------------------------

def concert_link(data: bytes) -> None:
    from bridge.terminals.caisse_ap.link import ConcertLink

    link = ConcertLink()
    now = 0.0
    link.send(b"CZ0040300CA00201", now, answer_timeout=60)
    rnd = random.Random(len(data))
    position = 0
    while position < len(data):
        step = rnd.randint(1, 32)
        link.receive(data[position:position + step], now)
        position += step
        now += rnd.choice((0.0, 0.01, 0.5, 3.0))
        link.tick(now)
    for _ in range(50):  # let every timer run out: the link must end idle, whatever it was fed
        deadline = link.deadline
        if deadline is None:
            break
        now = max(now, deadline)
        link.tick(now)


def _concert_seeds() -> list[bytes]:
    from bridge.terminals.caisse_ap.link import ACK, ENQ, EOT, encode_frame

    ack, enq, eot = bytes([ACK]), bytes([ENQ]), bytes([EOT])
    return [ack + ack + enq + encode_frame(b"CZ0040300AE00210") + eot,
            ack + ack + enq + encode_frame(b"CZ0040300AE00210", corrupt=True) + eot,
            ack + ack]


# -- Stripe answers -------------------------------------------------------------------------------------------

def stripe(data: bytes) -> None:
    from bridge.terminals.stripe.driver import StripeReaderDriver, _action_pi, _charge_details

    try:
        answer = json.loads(data)
    except (ValueError, RecursionError):
        return  # the stripe library reads the HTTP body; the driver only ever sees parsed JSON
    if not isinstance(answer, dict):
        return  # the stripe library turns any other answer into an API error
    _action_pi(answer)
    _charge_details(answer)
    StripeReaderDriver._refund_outcome(answer)
    action = answer.get("action") if isinstance(answer.get("action"), dict) else {}
    StripeReaderDriver._declined(None, answer, action)  # type: ignore[arg-type]


STRIPE_SEEDS = [json.dumps(m).encode() for m in (
    {"id": "pi_1", "object": "payment_intent", "status": "succeeded", "amount_received": 1234,
     "latest_charge": {"id": "ch_1", "payment_method_details": {"card_present": {
         "last4": "4242", "brand": "visa", "read_method": "contactless_emv",
         "receipt": {"authorization_code": "123456"}}}}},
    {"id": "pi_2", "status": "requires_payment_method",
     "last_payment_error": {"code": "card_declined", "decline_code": "insufficient_funds", "message": "No."},
     "charges": {"data": [{"id": "ch_2"}]}},
    {"id": "tmr_1", "object": "terminal.reader", "action": {
        "type": "process_payment_intent", "status": "failed", "failure_code": "customer_canceled",
        "process_payment_intent": {"payment_intent": "pi_1"}}},
    {"id": "re_1", "object": "refund", "status": "failed", "failure_reason": "expired_or_canceled_card",
     "amount": 100, "payment_intent": "pi_1"},
)]


# -- Odoo /pending answers ------------------------------------------------------------------------------------

def odoo_pending(data: bytes) -> None:
    from bridge.errors import BridgeError
    from bridge.uplink.commands import _parse_pending

    try:
        commands = _parse_pending(200, data)
    except BridgeError:
        return
    if not isinstance(commands, list):
        raise Crash("not a list")


ODOO_SEEDS = [json.dumps(m).encode() for m in (
    {"commands": [{"id": "c1", "op": "payment.start", "ts": NOW, "args": {"terminal": "till-1", "amount": 5,
                                                                         "currency": "EUR"}, "sig": "ab" * 32}]},
    {"commands": []},
    {"error": "nope"},
)]


# -- the mutation fuzzer --------------------------------------------------------------------------------------

#: Tokens that broke parsers before (issue 13) or often do.
INTERESTING = [b"[" * 5000, b"]" * 5000, b'"\\ud800"', b"1e400", b"NaN", b"Infinity", b"-Infinity", b"null",
               b"9" * 400, b"9223372036854775808", b"-1", b"0", b"true", b"{}", b"[]", b'""', b"\x00", b"\xff\xfe",
               b"\x02", b"\x03", b"\x04", b"\x05", b"\x06", b"\x15", "é€😀".encode(), b'{"a":' * 50]


def mutate(rnd: random.Random, seeds: list[bytes]) -> bytes:
    data = bytearray(rnd.choice(seeds))
    for _ in range(rnd.randint(1, 6)):
        choice = rnd.random()
        position = rnd.randint(0, len(data))
        if choice < 0.2 and data:
            data[min(position, len(data) - 1)] = rnd.randrange(256)
        elif choice < 0.35:
            data[position:position] = rnd.choice(INTERESTING)
        elif choice < 0.5 and data:
            end = min(len(data), position + rnd.randint(1, 16))
            del data[position:end]
        elif choice < 0.6 and data:
            start = rnd.randint(0, len(data) - 1)
            chunk = data[start:start + rnd.randint(1, 32)]
            data[position:position] = chunk * rnd.randint(1, 4)
        elif choice < 0.75:
            other = rnd.choice(seeds)
            cut = rnd.randint(0, len(other))
            data = data[:position] + bytearray(other[cut:])
        elif choice < 0.9:
            data = bytearray(_mutate_json(rnd, bytes(data)))
        else:
            data[position:position] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 8)))
    return bytes(data[:70_000])


def _mutate_json(rnd: random.Random, data: bytes) -> bytes:
    """Replace one value of a JSON document with another value of any type (structure-aware)."""
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return data
    paths = list(_paths(value, ()))
    if not paths:
        return data
    path = rnd.choice(paths)
    replacement = rnd.choice([None, True, False, 0, -1, 2 ** 63, 2 ** 64, 10 ** 30, 1.5, -0.0, 1e308, "", "x" * 200,
                              "till-1", "EUR", "refund", "approved", "\u00e9", [], {}, [1, [2, [3]]], {"a": {"b": {}}},
                              "pay_x", NOW, str(NOW), rnd.random(), rnd.randint(-10 ** 6, 10 ** 6)])
    if not path:
        return json.dumps(replacement).encode()
    target = value
    for key in path[:-1]:
        target = target[key]
    if isinstance(target, dict) and rnd.random() < 0.2:
        target["k" + str(rnd.randint(0, 9))] = replacement
    else:
        target[path[-1]] = replacement
    try:
        return json.dumps(value).encode()
    except (ValueError, RecursionError):
        return data


def _paths(value: Any, prefix: tuple) -> Iterator[tuple]:
    yield prefix
    if len(prefix) > 6:
        return
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, prefix + (key,))
    elif isinstance(value, list):
        for index, child in enumerate(value[:8]):
            yield from _paths(child, prefix + (index,))


def targets() -> dict[str, tuple[Callable[[bytes], None], list[bytes], bool]]:
    """name -> (target, seeds, whether half the inputs are signed first)."""
    session = SessionTarget()
    return {
        "session": (session, SESSION_SEEDS, True),
        "caisse_ap_tlv": (caisse_ap_tlv, _caisse_seeds(), False),
        "concert_link": (concert_link, _concert_seeds(), False),
        "stripe": (stripe, STRIPE_SEEDS, False),
        "odoo_pending": (odoo_pending, ODOO_SEEDS, False),
    }
