"""The Caisse-AP codec: request bytes, the incremental answer parser, and what an answer means."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.core import states
from bridge.core.money import CURRENCIES
from bridge.errors import BridgeError
from bridge.core.contract import CHEQUE, DEBIT, REFUND, PaymentRequest
from bridge.terminals.caisse_ap.codec import (
    MAX_MESSAGE_SIZE,
    AnswerParser,
    MalformedAnswer,
    encode_fields,
    encode_request,
    mask_card_number,
    outcome_from_answer,
    parse_message,
)

EUR = CURRENCIES["EUR"]

# Exact frames from the protocol notes, section (b).
OCA_DEBIT_REQUEST = b"CZ0040300CJ012012345678901CA00201CE003978CD0010CB0041234"
OCA_CHEQUE_REFUND_REQUEST = b"CZ0040300CJ012012345678901CA00201CE003978CD0011CB0045000CC00300C"
AKRETION_SUCCESS = (
    b"CZ0040300CJ012012345678901CA00201CE003978BA0010CD0010CB00511245AE00210CC003001CI0011AC006123456"
    b"AA016497010######1234AI014A0000000421010AB0042607CF0101010000000CG006424242"
)
AKRETION_FAILURE = b"CZ0040300CJ012012345678901CA00201CE003978BA0010CD0010CB00511245AE00201AF00211"
HIPAY_REJECTED = b"CZ0040320CJ012999999999999AE00201AF00209CA00201CB00512345CD0010CE003978"
REAL_IDENTIFICATION_ANSWER = b"CZ0040301CJ012330538600404CA00201CD001IAE00210"

FRAMES = {
    "oca_debit_request": (
        OCA_DEBIT_REQUEST,
        [("CZ", "0300"), ("CJ", "012345678901"), ("CA", "01"), ("CE", "978"), ("CD", "0"), ("CB", "1234")],
    ),
    "akretion_success": (
        AKRETION_SUCCESS,
        [
            ("CZ", "0300"), ("CJ", "012345678901"), ("CA", "01"), ("CE", "978"), ("BA", "0"), ("CD", "0"),
            ("CB", "11245"), ("AE", "10"), ("CC", "001"), ("CI", "1"), ("AC", "123456"),
            ("AA", "497010######1234"), ("AI", "A0000000421010"), ("AB", "2607"), ("CF", "1010000000"),
            ("CG", "424242"),
        ],
    ),
    "akretion_failure": (
        AKRETION_FAILURE,
        [
            ("CZ", "0300"), ("CJ", "012345678901"), ("CA", "01"), ("CE", "978"), ("BA", "0"), ("CD", "0"),
            ("CB", "11245"), ("AE", "01"), ("AF", "11"),
        ],
    ),
    "hipay_rejected": (
        HIPAY_REJECTED,
        [
            ("CZ", "0320"), ("CJ", "999999999999"), ("AE", "01"), ("AF", "09"), ("CA", "01"), ("CB", "12345"),
            ("CD", "0"), ("CE", "978"),
        ],
    ),
    "real_identification_answer": (
        REAL_IDENTIFICATION_ANSWER,
        [("CZ", "0301"), ("CJ", "330538600404"), ("CA", "01"), ("CD", "I"), ("AE", "10")],
    ),
}


def payment(amount: int = 1234, kind: str = DEBIT, method: str = "card", currency: str = "EUR") -> PaymentRequest:
    return PaymentRequest("pay-1", kind, amount, CURRENCIES[currency], method)


def field_ends(fields: list[tuple[str, str]]) -> set[int]:
    ends, offset = set(), 0
    for _tag, value in fields:
        offset += 5 + len(value)
        ends.add(offset)
    return ends


# --- requests ---------------------------------------------------------------------------------------------


def test_debit_request_is_byte_for_byte_the_frame_real_terminals_accept():
    assert encode_request(payment(1234)) == OCA_DEBIT_REQUEST


def test_cheque_refund_request_is_byte_for_byte_the_oca_frame():
    assert encode_request(payment(5000, REFUND, CHEQUE)) == OCA_CHEQUE_REFUND_REQUEST


def test_request_never_carries_bf():
    for request in (payment(), payment(kind=REFUND), payment(method=CHEQUE)):
        assert "BF" not in dict(parse_message(encode_request(request)))


def test_request_starts_with_protocol_version_and_uses_given_identity():
    data = encode_request(payment(), pos_number="07", protocol_version="0320", cash_register_id="247300123456")
    assert data.startswith(b"CZ0040320")
    assert dict(parse_message(data))["CA"] == "07"
    assert dict(parse_message(data))["CJ"] == "247300123456"


def test_request_uses_numeric_currency():
    assert dict(parse_message(encode_request(payment(currency="XPF"))))["CE"] == "953"


@pytest.mark.parametrize("amount, cb", [(1, "01"), (5, "05"), (9, "09"), (10, "10"), (99, "99"), (100, "100")])
def test_amounts_below_ten_cents_get_two_digits(amount, cb):
    assert dict(parse_message(encode_request(payment(amount))))["CB"] == cb


def test_twelve_digit_amount_is_sent():
    assert dict(parse_message(encode_request(payment(999_999_999_999))))["CB"] == "999999999999"


def test_thirteen_digit_amount_is_refused():
    with pytest.raises(BridgeError) as caught:
        encode_request(payment(1_000_000_000_000))
    assert caught.value.code == "invalid_amount"


@pytest.mark.parametrize(
    "options",
    [{"pos_number": "1"}, {"pos_number": "0A"}, {"protocol_version": "300"}, {"cash_register_id": "12345"}],
)
def test_request_refuses_badly_formed_identity(options):
    with pytest.raises(ValueError):
        encode_request(payment(), **options)


@pytest.mark.parametrize(
    "fields",
    [[("cz", "0300")], [("C1", "x")], [("CZ", "")], [("CZ", "x" * 1000)], [("CZ", "caf\u00e9")], [("CZ", "a\r")]],
)
def test_encode_fields_refuses_what_no_terminal_accepts(fields):
    with pytest.raises(ValueError):
        encode_fields(fields)


def test_encode_fields_writes_three_digit_lengths():
    assert encode_fields([("CZ", "0300"), ("AK", "x" * 999)]) == b"CZ0040300AK999" + b"x" * 999


# --- parsing ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FRAMES))
def test_real_frames_parse_from_every_split_point(name):
    frame, expected = FRAMES[name]
    for cut in range(len(frame) + 1):
        parser = AnswerParser()
        parser.feed(frame[:cut])
        parser.feed(frame[cut:])
        assert parser.complete, cut
        assert parser.fields == expected, cut


@pytest.mark.parametrize("name", sorted(FRAMES))
def test_real_frames_are_whole_only_at_field_boundaries(name):
    frame, expected = FRAMES[name]
    ends = field_ends(expected)
    parser = AnswerParser()
    for index in range(len(frame)):
        parser.feed(frame[index : index + 1])
        assert parser.complete == (index + 1 in ends), index


@pytest.mark.parametrize("tail", [b"\r", b"\n", b"\r\n", b"\r\n\r\n"])
def test_trailing_line_end_is_tolerated(tail):
    frame, expected = FRAMES["akretion_failure"]
    parser = AnswerParser()
    parser.feed(frame + tail[:1])
    parser.feed(tail[1:])
    assert parser.complete
    assert parser.fields == expected


def test_empty_input_is_not_whole():
    parser = AnswerParser()
    parser.feed(b"")
    assert not parser.complete


def test_parse_message_refuses_an_incomplete_message():
    with pytest.raises(MalformedAnswer, match="incomplete"):
        parse_message(AKRETION_FAILURE[:-1])


def test_long_field_of_999_characters_parses():
    data = b"CZ0040300AK999" + b"A" * 999
    assert parse_message(data)[1] == ("AK", "A" * 999)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"CZ0040300AE002\xe910", "not printable ASCII"),
        (b"CZ0040300AE00210\x00", "not printable ASCII"),
        (b"CZ0040300AE00210\x7f", "not printable ASCII"),
        (b"CZ0040300ae00210", "bad tag"),
        (b"CZ0040300A100210", "bad tag"),
        (b"CZ0040300AE0x210", "not three digits"),
        (b"CZ0040300AE 0210", "not three digits"),
        (b"CZ0040300AE00010", "length 000"),
        (b"CZ0040300AE00210AE00201", "twice"),
        (b"CA00201CZ0040300", "not CZ"),
        (b"\r\nCZ0040300", "starts with a line end"),
        (b"CZ0040300\r\nAE00210", "after the line end"),
        (b"CZ0040300AE002\r\n", "line end"),
    ],
)
def test_malformed_input_is_refused_with_a_reason(data, reason):
    parser = AnswerParser()
    with pytest.raises(MalformedAnswer) as caught:
        parser.feed(data)
    assert reason in caught.value.reason
    assert not parser.complete


def test_malformed_is_detected_before_the_message_could_be_whole():
    parser = AnswerParser()
    with pytest.raises(MalformedAnswer):
        parser.feed(b"CZ0040300AE0")
        parser.feed(b"X")


def test_malformed_stays_malformed():
    parser = AnswerParser()
    with pytest.raises(MalformedAnswer):
        parser.feed(b"XX")
    with pytest.raises(MalformedAnswer):
        parser.feed(b"CZ0040300")


def test_answer_above_the_cap_is_refused():
    tags = [a + b for a in string.ascii_uppercase for b in string.ascii_uppercase if a + b != "CZ"][:70]
    data = encode_fields([("CZ", "0300")] + [(tag, "x" * 999) for tag in tags])
    assert len(data) > MAX_MESSAGE_SIZE
    parser = AnswerParser()
    with pytest.raises(MalformedAnswer, match="larger than"):
        for start in range(0, len(data), 4096):
            parser.feed(data[start : start + 4096])


def test_answer_just_under_the_cap_parses():
    parser = AnswerParser(max_size=len(AKRETION_SUCCESS))
    parser.feed(AKRETION_SUCCESS)
    assert parser.complete
    with pytest.raises(MalformedAnswer):
        parser.feed(b"\r")


_TAGS = st.text(alphabet=string.ascii_uppercase, min_size=2, max_size=2).filter(lambda tag: tag != "CZ")
_VALUES = st.text(alphabet=[chr(c) for c in range(0x20, 0x7F)], min_size=1, max_size=60)
_MESSAGES = st.tuples(
    _VALUES, st.lists(st.tuples(_TAGS, _VALUES), max_size=12, unique_by=lambda field: field[0])
).map(lambda parts: [("CZ", parts[0])] + parts[1])


@settings(max_examples=200)
@given(fields=_MESSAGES, data=st.data())
def test_any_message_parses_back_from_any_split(fields, data):
    encoded = encode_fields(fields)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(encoded)), max_size=6)))
    parser = AnswerParser()
    for start, end in zip([0] + cuts, cuts + [len(encoded)]):
        parser.feed(encoded[start:end])
    assert parser.complete
    assert parser.fields == fields


@settings(max_examples=200)
@given(fields=_MESSAGES, data=st.data())
def test_any_prefix_is_whole_exactly_at_field_boundaries(fields, data):
    encoded = encode_fields(fields)
    cut = data.draw(st.integers(0, len(encoded)))
    parser = AnswerParser()
    parser.feed(encoded[:cut])
    assert parser.complete == (cut in field_ends(fields))


@settings(max_examples=200)
@given(chunks=st.lists(st.binary(max_size=40), max_size=5))
def test_random_bytes_either_parse_or_are_malformed(chunks):
    parser = AnswerParser()
    try:
        for chunk in chunks:
            parser.feed(chunk)
    except MalformedAnswer as error:
        assert error.reason
        assert not parser.complete
    else:
        if parser.complete:
            assert parser.fields[0][0] == "CZ"


@settings(max_examples=200)
@given(prefix=st.sampled_from(sorted(FRAMES)), noise=st.binary(min_size=1, max_size=20))
def test_real_frame_followed_by_noise_never_crashes(prefix, noise):
    parser = AnswerParser()
    try:
        parser.feed(FRAMES[prefix][0] + noise)
    except MalformedAnswer:
        pass


# --- answer -> outcome ------------------------------------------------------------------------------------


def answer(**fields: str) -> dict[str, str]:
    base = {"CZ": "0300", "CJ": "012345678901", "CA": "01", "CE": "978", "CD": "0", "CB": "1234"}
    base.update(fields)
    return {tag: value for tag, value in base.items() if value is not None}


def test_akretion_success_answer_is_approved_with_details():
    outcome = outcome_from_answer(payment(11245), dict(parse_message(AKRETION_SUCCESS)))
    assert outcome.state == states.APPROVED
    assert outcome.code == "approved"
    assert outcome.message == "The payment was approved."
    assert outcome.details == {
        "terminal_code": "AE=10",
        "authorisation": "123456",
        "card_masked": "497010######1234",
        "application": "CB / Visa / Mastercard (chip)",
        "application_code": "001",
        "entry_mode": "contact",
        "amount_authorised": 11245,
    }
    assert "card_expiry" not in outcome.details


def test_approved_refund_says_refund():
    outcome = outcome_from_answer(payment(kind=REFUND), answer(CD="1", AE="10"))
    assert outcome.state == states.APPROVED
    assert "refund" in outcome.message


def test_zero_padded_amount_in_answer_is_the_same_amount():
    assert outcome_from_answer(payment(1234), answer(CB="0000001234", AE="10")).state == states.APPROVED


def test_small_amount_answered_with_one_digit_is_the_same_amount():
    assert outcome_from_answer(payment(5), answer(CB="5", AE="10")).state == states.APPROVED


def test_partial_approval_is_unknown_amount_mismatch():
    outcome = outcome_from_answer(payment(1234), answer(CB="1000", AE="10", AC="184117"))
    assert outcome.state == states.UNKNOWN
    assert outcome.code == "amount_mismatch"
    assert "10.00 EUR" in outcome.message and "12.34 EUR" in outcome.message
    assert "receipt" in outcome.message
    assert outcome.details["amount_authorised"] == 1000
    assert outcome.details["authorisation"] == "184117"


@pytest.mark.parametrize(
    "changes",
    [{"CA": "02"}, {"CD": "1"}, {"CD": "I"}, {"CE": "840"}, {"CA": None}, {"CB": None}, {"CB": "12a4"}],
)
def test_approval_whose_echo_does_not_match_is_unknown(changes):
    outcome = outcome_from_answer(payment(1234), answer(AE="10", **changes))
    assert outcome.state == states.UNKNOWN
    assert outcome.code == "answer_mismatch"


def test_identification_answer_is_not_taken_as_an_approval():
    outcome = outcome_from_answer(payment(1234), dict(parse_message(REAL_IDENTIFICATION_ANSWER)))
    assert outcome.state == states.UNKNOWN


def test_echo_is_not_checked_on_failure_so_zero_amount_cancel_is_cancelled():
    outcome = outcome_from_answer(payment(350), answer(CB="000", AE="01", AF="11", CA=None))
    assert outcome.state == states.CANCELLED
    assert outcome.code == "operator_abandon"


def test_akretion_failure_frame_is_operator_abandon():
    outcome = outcome_from_answer(payment(11245), dict(parse_message(AKRETION_FAILURE)))
    assert (outcome.state, outcome.code) == (states.CANCELLED, "operator_abandon")
    assert outcome.message == "The payment was cancelled on the terminal."
    assert outcome.details["terminal_code"] == "AE=01 AF=11"


def test_hipay_rejected_frame_is_failed_format():
    outcome = outcome_from_answer(payment(12345), dict(parse_message(HIPAY_REJECTED)))
    assert (outcome.state, outcome.code) == (states.FAILED, "terminal_rejected_format")


OUTCOME_TABLE = [
    ("02", states.DECLINED, "call_issuer"),
    ("03", states.DECLINED, "terminal_refused"),
    ("04", states.DECLINED, "card_declined"),
    ("05", states.DECLINED, "card_forbidden"),
    ("06", states.CANCELLED, "cardholder_abandon"),
    ("07", states.CANCELLED, "not_completed"),
    ("08", states.CANCELLED, "input_timeout"),
    ("09", states.FAILED, "terminal_rejected_format"),
    ("10", states.FAILED, "terminal_rejected_selection"),
    ("11", states.CANCELLED, "operator_abandon"),
    ("12", states.FAILED, "terminal_rejected_action"),
    ("13", states.FAILED, "unsupported_currency"),
    ("00", states.DECLINED, "terminal_refused"),
    ("99", states.DECLINED, "terminal_refused"),
    ("01", states.UNKNOWN, "terminal_answer_unclear"),
]


@pytest.mark.parametrize("af, state, code", OUTCOME_TABLE)
def test_not_done_answer_maps_af_to_state_and_code(af, state, code):
    outcome = outcome_from_answer(payment(), answer(AE="01", AF=af, CB="00"))
    assert (outcome.state, outcome.code) == (state, code)


@pytest.mark.parametrize("af, state, code", OUTCOME_TABLE)
def test_messages_are_plain_words(af, state, code):
    outcome = outcome_from_answer(payment(), answer(AE="01", AF=af))
    assert outcome.message[0].isupper() and outcome.message.endswith(".")
    for jargon in ("AE", "AF", "CB", "TLV", "code"):
        assert jargon not in outcome.message


def test_declined_message_is_the_one_a_cashier_reads():
    outcome = outcome_from_answer(payment(), answer(AE="01", AF="04"))
    assert outcome.message == "The card was declined by the bank."
    assert outcome_from_answer(payment(), answer(AE="01", AF="06")).message == "The customer cancelled on the terminal."


def test_af_longer_than_two_characters_uses_its_first_two():
    outcome = outcome_from_answer(payment(), answer(AE="01", AF="0551" + " " * 21 + "0000"))
    assert (outcome.state, outcome.code) == (states.DECLINED, "card_forbidden")
    assert outcome.details["terminal_code"].startswith("AE=01 AF=0551")


def test_not_done_without_af_is_declined():
    assert outcome_from_answer(payment(), answer(AE="01")).code == "terminal_refused"


def test_refund_failure_message_says_refund():
    outcome = outcome_from_answer(payment(kind=REFUND), answer(CD="1", AE="01", AF="11"))
    assert outcome.message == "The refund was cancelled on the terminal."


@pytest.mark.parametrize("status", [None, "11", "00", "1", "100"])
def test_missing_or_unknown_status_is_unknown(status):
    outcome = outcome_from_answer(payment(), answer(AE=status))
    assert (outcome.state, outcome.code) == (states.UNKNOWN, "terminal_answer_unclear")


def test_clear_card_number_from_the_terminal_is_masked():
    outcome = outcome_from_answer(payment(), answer(AE="10", AA="4970101234561234"))
    assert outcome.details["card_masked"] == "497010######1234"


@pytest.mark.parametrize(
    "given, shown",
    [
        ("497010######1234", "497010######1234"),
        ("***********0674", "***********0674"),
        ("4970 1012 3456 1234", "4970 10## #### 1234"),
        ("5131000000000001234", "513100#########1234"),
        ("1234", "1234"),
    ],
)
def test_mask_card_number(given, shown):
    assert mask_card_number(given) == shown


@pytest.mark.parametrize(
    "cc, label",
    [("001", "CB / Visa / Mastercard (chip)"), ("00B", "CB / Visa / Mastercard (contactless)"),
     ("101", "CB distance selling"), ("601", "Payment in instalments (PNF)"), ("00C", "Cheque"), ("ZZZ", "Other")],
)
def test_application_label_uses_all_three_characters(cc, label):
    outcome = outcome_from_answer(payment(), answer(AE="10", CC=cc))
    assert outcome.details["application"] == label
    assert outcome.details["application_code"] == cc


@pytest.mark.parametrize(
    "ci, mode", [("1", "contact"), ("2", "contactless"), ("3", "magstripe"), ("4", "manual"), ("9", "other")]
)
def test_entry_mode(ci, mode):
    assert outcome_from_answer(payment(), answer(AE="10", CI=ci)).details["entry_mode"] == mode


def test_cheque_approval_has_no_card_details():
    outcome = outcome_from_answer(payment(method=CHEQUE), answer(AE="10", CC="00C"))
    assert outcome.state == states.APPROVED
    assert outcome.details["application"] == "Cheque"
    assert "card_masked" not in outcome.details


@pytest.mark.parametrize("af", ["04", "02", "05", "99"])
def test_a_refused_cheque_is_not_said_to_be_declined_by_the_bank(af):
    """The i2200 cheque printer answers AF=04 whatever went wrong (protocols/caisse-ap-answers.md)."""
    outcome = outcome_from_answer(payment(method=CHEQUE), answer(AE="01", AF=af, CC="00C"))
    assert (outcome.state, outcome.code) == (states.DECLINED, "cheque_refused")
    assert "cheque" in outcome.message and "bank" not in outcome.message


def test_a_refused_card_still_says_the_bank_declined_it():
    outcome = outcome_from_answer(payment(), answer(AE="01", AF="04"))
    assert outcome.message == "The card was declined by the bank."


@pytest.mark.parametrize("cb", ["0", "00", "000000000000", "1234", "999999999999", None])
def test_an_answer_that_is_not_an_approval_is_never_judged_by_its_amount(cb):
    for af, state in (("04", states.DECLINED), ("11", states.CANCELLED), ("06", states.CANCELLED)):
        outcome = outcome_from_answer(payment(1234), answer(AE="01", AF=af, CB=cb))
        assert outcome.state == state
        assert "amount_authorised" not in outcome.details


@settings(max_examples=300)
@given(st.integers(min_value=1, max_value=999_999_999_999))
def test_the_bridge_always_sends_cb_as_2_to_12_digits_which_a_strict_terminal_accepts(amount):
    from bridge.terminals.caisse_ap.simulator import SimulatorScript, answer_fields

    fields = parse_message(encode_request(payment(amount)))
    cb = dict(fields)["CB"]
    assert 2 <= len(cb) <= 12 and cb.isdigit() and int(cb) == amount
    assert dict(answer_fields(fields, SimulatorScript()))["AE"] == "10"
