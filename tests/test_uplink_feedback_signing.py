"""Ogone SHA-OUT as the feedback signs it: the published vectors, and the feedback parameters of a payment."""

from hypothesis import given
from hypothesis import strategies as st

from bridge.uplink.feedback import (FEEDBACK_KEYS, SHA_OUT_KEYS, feedback_params, ogone_amount, ogone_status,
                                    sha_out_string, sha_sign, sha_verify, signed_form, trx_date)

V1 = {"AAVADDRESS": "NO", "amount": "1111.11", "CARDNO": "XXXXXXXXXXXX1111", "CN": "Dummy Customer Name",
      "currency": "USD", "IP": "101.00.111.22", "NCERROR": "0", "orderID": "Test Transaction",
      "PAYID": "01234567899", "PM": "CreditCard", "STATUS": "9", "TRXDATE": "01/31/22"}
V2 = {"STATUS": "5", "orderID": "SORDER014", "PAYID": "52329271", "CN": "Norbert Buyer", "NCERROR": "0",
      "TRXDATE": "11/20/15", "IP": "180.211.100.3", "BRAND": "VISA", "ACCEPTANCE": "test123", "currency": "USD",
      "amount": "247", "ED": "0220", "CARDNO": "XXXXXXXXXXXX1111", "PM": "CreditCard",
      "return_url": "/shop/payment/validate"}
V3 = {"AMOUNT": "1500", "CURRENCY": "EUR", "LANGUAGE": "en_US", "ORDERID": "1234", "PSPID": "MyPSPID"}


def test_v1_string_to_hash_is_odoos():
    assert sha_out_string(V1, "dummy") == (
        "AAVADDRESS=NOdummyAMOUNT=1111.11dummyCARDNO=XXXXXXXXXXXX1111dummyCN=Dummy Customer NamedummyCURRENCY=USD"
        "dummyIP=101.00.111.22dummyNCERROR=0dummyORDERID=Test TransactiondummyPAYID=01234567899dummyPM=CreditCard"
        "dummySTATUS=9dummyTRXDATE=01/31/22dummy")


def test_v1_with_each_hash():
    assert sha_sign(V1, "dummy", "sha1") == "2CE444D2260D914EA7E56450B7B28F189238553B"
    assert sha_sign(V1, "dummy", "sha256") == "4E0C025F12036FFC2635ABD03190D5326EED090FF45F8E591112F13A0F5F8CAC"
    assert sha_sign(V1, "dummy", "sha512") == (
        "864CD9391546CB490845C38EC8581BD365E0BE5B2BD20FFCE15724F281F00BE8CC2F54B33777F3440E619CFC28EA50FE4C76432FB4"
        "356F9C026E575A87AC29D0")


def test_v1_unchanged_under_the_bridges_longer_list():
    assert sha_sign(V1, "dummy", "sha512", FEEDBACK_KEYS) == sha_sign(V1, "dummy", "sha512")


def test_v2_drops_the_paramplus_echo_and_signs_status():
    assert sha_sign(V2, "12345678910Aa!@#", "sha1") == "0CBB4EBAAB2A741645A4B75DA95A5481D1598C2D"
    assert sha_sign(dict(V2, STATUS="2"), "12345678910Aa!@#", "sha1") == "288dd1325f083915a3d16de54e0eb9227e46f728".upper()


def test_v3_sha_in_signs_every_parameter():
    everything = frozenset(k.upper() for k in V3)
    assert sha_sign(V3, "Mysecretsig1875!?", "sha512", everything) == (
        "D1CFE8833A297D0922E908B2B44934B09EE966EF1584DC0D696304E07BB58BA71973C2383C831D878D8A243BB7D7DFFFBE53CEE21955"
        "CDFEF44FE82E551F859D")
    assert sha_sign(V3, "Mysecretsig1875!?", "sha1", everything) == "F4CC376CD7A834D997B91598FA747825A238BE0A"
    assert sha_sign(V3, "Mysecretsig1875!?", "sha256", everything) == (
        "E019359BAA3456AE5A986B6AABD22CF1B3E09438739E97F17A7F61DF5A11B30F")


def test_empty_values_are_dropped_but_zero_is_signed():
    assert sha_out_string({"NCERROR": "0", "CN": "", "ALIAS": None}, "p") == "NCERROR=0p"


def test_verify_wants_the_upper_case_digest_and_the_right_passphrase():
    signed = dict(V1, SHASIGN=sha_sign(V1, "dummy", "sha1"))
    assert sha_verify(signed, "dummy", "sha1")
    assert not sha_verify(signed, "dummy!", "sha1")
    assert not sha_verify(dict(V1), "dummy", "sha1")
    assert not sha_verify(dict(signed, STATUS="2"), "dummy", "sha1")


@given(st.dictionaries(st.sampled_from(sorted(FEEDBACK_KEYS)), st.text(max_size=20), max_size=8),
       st.text(min_size=16, max_size=32))
def test_any_change_of_a_signed_value_breaks_the_signature(params, passphrase):
    signed = dict(params, SHASIGN=sha_sign(params, passphrase, "sha512", FEEDBACK_KEYS))
    assert sha_verify(signed, passphrase, "sha512", FEEDBACK_KEYS)
    for key, value in params.items():
        if value:
            changed = dict(signed, **{key: value + "x"})
            assert not sha_verify(changed, passphrase, "sha512", FEEDBACK_KEYS)


def test_status_mapping():
    assert [ogone_status("debit", s) for s in ("approved", "declined", "cancelled", "failed", "unknown")] == \
        ["9", "2", "1", "0", "92"]
    assert ogone_status("refund", "approved") == "8"
    assert ogone_status("refund", "declined") == "2"
    assert ogone_status("debit", "in_progress") is None


def test_amounts_and_dates_as_ogone_writes_them():
    assert ogone_amount(111111, "EUR") == "1111.11"
    assert ogone_amount(24700, "USD") == "247"
    assert ogone_amount(1230, "EUR") == "12.3"
    assert ogone_amount(500, "JPY") == "500"
    assert trx_date("2022-01-31T23:59:59.000Z") == "01/31/22"


PAYMENT = {"id": "pay_1", "command_id": "odoo-42", "terminal": "till-1", "kind": "debit", "method": "card",
           "amount": 1234, "currency": "EUR", "state": "approved", "final": True, "reason": None,
           "details": {"authorisation": "123456", "card_masked": "497010######1234"},
           "created": "2024-05-01T10:00:00.000Z", "updated": "2024-05-01T10:00:05.000Z"}


def test_feedback_parameters_of_an_approved_payment():
    params = feedback_params(PAYMENT, 17, "shop-1", "cl_odoo")
    assert params == {"ORDERID": "odoo-42", "PAYID": "pay_1", "AMOUNT": "12.34", "CURRENCY": "EUR", "STATUS": "9",
                      "NCERROR": "0", "CARDNO": "497010XXXXXX1234", "PM": "CreditCard", "ACCEPTANCE": "123456",
                      "TRXDATE": "05/01/24", "TBCLIENT": "cl_odoo", "TBBRIDGE": "shop-1", "TBSEQ": "17",
                      "TBSTATE": "approved", "TBTERMINAL": "till-1", "TBKIND": "debit"}


def test_every_parameter_sent_is_signed():
    declined = dict(PAYMENT, state="declined", reason={"code": "card_declined", "message": "Refusée par la banque"},
                    details={"refund_of": "pay_0"})
    params = feedback_params(declined, 3, "shop-1", "cl_odoo")
    assert params["STATUS"] == "2" and params["NCERROR"] == "1"
    assert set(params) <= FEEDBACK_KEYS
    assert not set(params) - SHA_OUT_KEYS - {"TBCLIENT", "TBBRIDGE", "TBSEQ", "TBSTATE", "TBREASON", "TBMESSAGE",
                                             "TBTERMINAL", "TBKIND", "TBREFUNDOF"}
    from urllib.parse import parse_qsl

    form = dict(parse_qsl(signed_form(params, "s" * 20, "sha512").decode()))
    assert form["TBMESSAGE"] == "Refusée par la banque"
    assert sha_verify(form, "s" * 20, "sha512", FEEDBACK_KEYS)
    form["TBCLIENT"] = "cl_other"  # the client is signed too: another one's name breaks the signature
    assert not sha_verify(form, "s" * 20, "sha512", FEEDBACK_KEYS)
