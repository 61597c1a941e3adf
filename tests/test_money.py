import pytest
from hypothesis import given, strategies as st

from bridge.core.money import currency, format_major, parse_major, validate_amount
from bridge.errors import BridgeError


def code_of(call, *args):
    with pytest.raises(BridgeError) as info:
        call(*args)
    return info.value.code


def test_known_currencies_carry_iso_numeric_and_exponent():
    assert (currency("EUR").numeric, currency("EUR").exponent) == ("978", 2)
    assert (currency("XPF").numeric, currency("XPF").exponent) == ("953", 0)
    assert currency("TND").exponent == 3


@pytest.mark.parametrize("code", ["eur", "EURO", "", None, 978, "XXX"])
def test_unknown_or_malformed_currency_is_refused(code):
    assert code_of(currency, code) == "unknown_currency"


@pytest.mark.parametrize("amount", [0, -1, 1.5, 12.0, "1234", True, None, 10**12, 123456789012345])
def test_invalid_amounts_are_refused(amount):
    assert code_of(validate_amount, amount) == "invalid_amount"


def test_twelve_digit_amount_is_the_largest_accepted():
    assert validate_amount(10**12 - 1) == 999999999999


@pytest.mark.parametrize("text,code,minor", [("12.34", "EUR", 1234), ("12,34", "EUR", 1234), ("0.05", "EUR", 5),
                                             ("12", "EUR", 1200), ("500", "XPF", 500), ("1.234", "TND", 1234)])
def test_parse_major(text, code, minor):
    assert parse_major(text, currency(code)) == minor


@pytest.mark.parametrize("text,code", [("12.345", "EUR"), ("1.5", "XPF"), ("abc", "EUR"), ("NaN", "EUR"),
                                       ("-3", "EUR"), ("0", "EUR"), ("inf", "EUR")])
def test_parse_major_refuses(text, code):
    assert code_of(parse_major, text, currency(code)) == "invalid_amount"


@given(st.integers(min_value=1, max_value=10**12 - 1), st.sampled_from(["EUR", "XPF", "TND", "JPY"]))
def test_format_then_parse_round_trips(amount, code):
    cur = currency(code)
    assert parse_major(format_major(amount, cur), cur) == amount
