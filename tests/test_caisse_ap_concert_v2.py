"""Concert V2 "E+" payloads: exact request bytes, answers of both sizes, and what each answer means."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.core import states
from bridge.core.money import CURRENCIES
from bridge.errors import BridgeError
from bridge.core.contract import CHEQUE, DEBIT, REFUND, PaymentRequest
from bridge.terminals.caisse_ap import concert_v2
from bridge.terminals.caisse_ap.codec import MalformedAnswer
from bridge.terminals.caisse_ap.concert_v2 import (
    decode_answer,
    decode_request,
    encode_answer,
    encode_request,
    outcome_from_answer,
)

EUR = CURRENCIES["EUR"]
REQUEST = PaymentRequest("pay-1", DEBIT, 1250, EUR)
SHORT_APPROVAL = b"01000001250" + b"1" + b"978" + b"0000123456"
REPORT = b"4970101234561234" + b"0" * 39


def test_debit_request_is_the_34_characters_of_protocol_e_plus_with_a_short_answer():
    # pyTeliumManager's example (12.50 EUR, card, debit) with answer flag 0: no card number in the answer.
    assert encode_request(REQUEST) == b"01" b"00001250" b"0" b"1" b"0" b"978" + b" " * 10 + b"A010" b"B010"


def test_refund_is_a_credit_and_cheque_uses_mode_c():
    refund = encode_request(PaymentRequest("r", REFUND, 500, EUR), pos_number="07")
    cheque = encode_request(PaymentRequest("c", DEBIT, 500, EUR, CHEQUE))
    assert refund[:13] == b"07" b"00000500" b"0" b"1" b"1"
    assert cheque[11:13] == b"C0"


def test_amount_over_eight_digits_is_refused_with_invalid_amount():
    with pytest.raises(BridgeError) as raised:
        encode_request(PaymentRequest("p", DEBIT, 100_000_000, EUR))
    assert raised.value.code == "invalid_amount"
    assert "999999.99 EUR" in raised.value.message


def test_bad_pos_number_is_a_value_error():
    with pytest.raises(ValueError):
        encode_request(REQUEST, pos_number="1")


def test_request_decodes_back_to_its_fields():
    decoded = decode_request(encode_request(PaymentRequest("p", REFUND, 4321, CURRENCIES["USD"]), "02"))
    assert (decoded.pos_number, decoded.amount, decoded.answer_flag, decoded.mode, decoded.type) == (
        "02", 4321, "0", "1", "1")
    assert (decoded.currency, decoded.delay, decoded.authorisation) == ("840", "A010", "B010")


@pytest.mark.parametrize("payload", [b"0100001250", b"XX00001250010978" + b" " * 10 + b"A010B010", b"\x00" * 34])
def test_malformed_request_is_refused(payload):
    with pytest.raises(MalformedAnswer):
        decode_request(payload)


def test_short_answer_is_25_characters():
    answer = decode_answer(SHORT_APPROVAL)
    assert len(SHORT_APPROVAL) == concert_v2.SHORT_ANSWER_SIZE
    assert (answer.pos_number, answer.status, answer.amount, answer.mode, answer.currency, answer.private) == (
        "01", "0", 1250, "1", "978", "0000123456")
    assert not answer.has_report


def test_long_answer_is_80_characters_and_its_report_is_not_kept():
    payload = SHORT_APPROVAL[:12] + REPORT + SHORT_APPROVAL[12:]
    assert len(payload) == concert_v2.LONG_ANSWER_SIZE
    answer = decode_answer(payload)
    assert answer.has_report and answer.currency == "978" and answer.private == "0000123456"
    assert "4970101234561234" not in repr(answer)
    assert "4970101234561234" not in repr(outcome_from_answer(REQUEST, answer))


@pytest.mark.parametrize(
    "payload, reason",
    [
        (SHORT_APPROVAL[:-1], "25 or 80 characters"),
        (b"0A" + SHORT_APPROVAL[2:], "POS number"),
        (SHORT_APPROVAL[:3] + b"0000125X" + SHORT_APPROVAL[11:], "amount"),
        (SHORT_APPROVAL[:12] + b"EUR" + SHORT_APPROVAL[15:], "currency"),
        (SHORT_APPROVAL[:-1] + b"\x03", "control"),
        (SHORT_APPROVAL[:-1] + b"\xe9", "ASCII"),
    ],
)
def test_malformed_answer_says_why(payload, reason):
    with pytest.raises(MalformedAnswer) as raised:
        decode_answer(payload)
    assert reason in raised.value.reason


def test_encode_answer_round_trips_both_sizes():
    short = encode_answer("01", "0", 1250, "1", "978", "0000123456")
    long = encode_answer("01", "0", 1250, "1", "978", "0000123456", REPORT.decode())
    assert short == SHORT_APPROVAL
    assert decode_answer(long).has_report
    with pytest.raises(ValueError):
        encode_answer("01", "0", 1, "1", "978", report="short")


def answer(status="0", amount=1250, pos="01", currency="978", mode="1"):
    return decode_answer(encode_answer(pos, status, amount, mode, currency, "0000000042"))


def test_accepted_with_matching_echoes_is_approved():
    outcome = outcome_from_answer(REQUEST, answer())
    assert (outcome.state, outcome.code) == (states.APPROVED, "approved")
    assert outcome.details == {"terminal_code": "status=0", "application": "Card", "amount_authorised": 1250,
                               "terminal_reference": "0000000042"}


def test_refund_accepted_says_refund():
    outcome = outcome_from_answer(PaymentRequest("r", REFUND, 1250, EUR), answer())
    assert outcome.message == "The refund was approved."


def test_refused_is_declined_and_nothing_charged():
    outcome = outcome_from_answer(REQUEST, answer(status="7", amount=0))
    assert (outcome.state, outcome.code) == (states.DECLINED, "terminal_refused")
    assert "Nothing was charged" in outcome.message


@pytest.mark.parametrize("status", ["9", "5", " "])
def test_any_other_status_is_unknown(status):
    outcome = outcome_from_answer(REQUEST, answer(status=status))
    assert (outcome.state, outcome.code) == (states.UNKNOWN, "terminal_answer_unclear")
    assert "receipt" in outcome.message


@pytest.mark.parametrize("kwargs", [{"pos": "02"}, {"currency": "840"}])
def test_approval_for_another_till_or_currency_is_unknown(kwargs):
    outcome = outcome_from_answer(REQUEST, answer(**kwargs))
    assert (outcome.state, outcome.code) == (states.UNKNOWN, "answer_mismatch")


def test_approval_of_another_amount_is_unknown_with_both_amounts():
    outcome = outcome_from_answer(REQUEST, answer(amount=1000))
    assert (outcome.state, outcome.code) == (states.UNKNOWN, "amount_mismatch")
    assert "10.00 EUR instead of 12.50 EUR" in outcome.message


def test_cheque_application_is_named():
    assert outcome_from_answer(REQUEST, answer(mode="C")).details["application"] == "Cheque"


@settings(max_examples=100)
@given(amount=st.integers(1, concert_v2.MAX_AMOUNT), kind=st.sampled_from([DEBIT, REFUND]),
       method=st.sampled_from(["card", CHEQUE]), pos=st.integers(0, 99),
       code=st.sampled_from(sorted(CURRENCIES)))
def test_every_request_is_34_printable_characters_and_decodes_back(amount, kind, method, pos, code):
    request = PaymentRequest("p", kind, amount, CURRENCIES[code], method)
    payload = encode_request(request, f"{pos:02d}")
    assert len(payload) == concert_v2.REQUEST_SIZE and payload.decode("ascii").isprintable()
    decoded = decode_request(payload)
    assert (decoded.amount, decoded.currency, int(decoded.pos_number)) == (amount, CURRENCIES[code].numeric, pos)


@settings(max_examples=100)
@given(st.binary(max_size=100))
def test_decoding_arbitrary_bytes_either_works_or_says_why(data):
    try:
        decode_answer(data)
    except MalformedAnswer as error:
        assert error.reason


@pytest.mark.parametrize("mnt", [b"00000000", b"00001250", b"00099999", b"        ", b"????????"])
def test_a_refusal_is_judged_by_its_status_never_by_its_amount(mnt):
    """Vendors differ (protocols/caisse-ap-answers.md): Ingenico sends zeros on an abandon, others echo the
    amount; a refusal is a refusal whatever stands in MNT, and no amount is recorded from it."""
    decoded = decode_answer(b"017" + mnt + b"1" + b"978" + b" " * 10)
    outcome = outcome_from_answer(REQUEST, decoded)
    assert (outcome.state, outcome.code) == (states.DECLINED, "terminal_refused")
    assert "amount_authorised" not in outcome.details


def test_a_refused_cheque_is_not_said_to_be_declined_by_the_bank():
    cheque = PaymentRequest("pay-c", DEBIT, 1250, EUR, method=CHEQUE)
    outcome = outcome_from_answer(cheque, answer(status="7", amount=0, mode="C"))
    assert (outcome.state, outcome.code) == (states.DECLINED, "cheque_refused")
    assert "cheque" in outcome.message and "bank" not in outcome.message


@pytest.mark.parametrize("outcome", ["decline", "abandon"])
@pytest.mark.parametrize("vendor, refused_amount, mnt", [
    # Assumed: an Ingenico builds its V2 answer from the same result as V3, whose red-button CB is all zeros.
    ("ingenico", None, 0),
    ("nepting", None, 1250),
    # pyTeliumManager checks an answer's amount against the request's bounds: a zero amount breaks it.
    ("ingenico", "echo", 1250),
])
def test_the_v2_simulators_amount_in_a_refusal_follows_the_vendor_profile(outcome, vendor, refused_amount, mnt):
    from twisted.internet.task import Clock

    from bridge.terminals.caisse_ap.serial_simulator import PROTOCOL_V2, SerialTerminal
    from bridge.terminals.caisse_ap.simulator import SimulatorScript

    script = SimulatorScript(outcome=outcome, vendor=vendor, refused_amount=refused_amount)
    terminal = SerialTerminal(Clock(), script, protocol=PROTOCOL_V2)
    reply = decode_answer(terminal.answer_to(concert_v2.encode_request(REQUEST)))
    assert (reply.status, reply.amount) == (concert_v2.STATUS_REFUSED, mnt)
    approved = SerialTerminal(Clock(), SimulatorScript(vendor=vendor), protocol=PROTOCOL_V2)
    assert decode_answer(approved.answer_to(concert_v2.encode_request(REQUEST))).amount == 1250
