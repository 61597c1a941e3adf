"""Amounts in minor units and ISO 4217 currencies.  Never floats."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from bridge.errors import BridgeError

#: The largest amount any terminal protocol we speak can carry (Caisse-AP CB is at most 12 digits).
MAX_AMOUNT_DIGITS = 12


@dataclass(frozen=True)
class Currency:
    code: str  # ISO 4217 alphabetic, e.g. "EUR"
    numeric: str  # ISO 4217 numeric, three digits, e.g. "978"
    exponent: int  # number of minor-unit digits, e.g. 2


# ISO 4217 (the currencies a shop in Europe, the French overseas territories, and Stripe's markets meet).
_TABLE = """
AED 784 2; AUD 036 2; BGN 975 2; BRL 986 2; CAD 124 2; CHF 756 2; CNY 156 2; CZK 203 2; DKK 208 2;
EUR 978 2; GBP 826 2; HKD 344 2; HUF 348 2; ILS 376 2; INR 356 2; ISK 352 0; JPY 392 0; KRW 410 0;
MAD 504 2; MXN 484 2; NOK 578 2; NZD 554 2; PLN 985 2; RON 946 2; SEK 752 2; SGD 702 2; THB 764 2;
TND 788 3; TRY 949 2; USD 840 2; XAF 950 0; XOF 952 0; XPF 953 0; ZAR 710 2; MUR 480 2; KWD 414 3
"""

CURRENCIES: dict[str, Currency] = {}
for _entry in _TABLE.replace("\n", " ").split(";"):
    _code, _numeric, _exponent = _entry.split()
    CURRENCIES[_code] = Currency(_code, _numeric, int(_exponent))


def currency(code: object) -> Currency:
    """The currency named by an ISO 4217 alphabetic code, or ``unknown_currency``."""
    if isinstance(code, str) and code.upper() in CURRENCIES and code == code.upper():
        return CURRENCIES[code]
    raise BridgeError("unknown_currency", f"The currency {code!r} is not known to the bridge.")


def validate_amount(amount: object) -> int:
    """An amount in minor units: a positive integer of at most 12 digits, or ``invalid_amount``."""
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise BridgeError(
            "invalid_amount",
            "The amount must be a whole number of cents (minor units), for example 1234 for 12.34.",
        )
    if amount <= 0:
        raise BridgeError("invalid_amount", "The amount must be more than zero.")
    if len(str(amount)) > MAX_AMOUNT_DIGITS:
        raise BridgeError("invalid_amount", "The amount is too large for a payment terminal.")
    return amount


def parse_major(text: str, cur: Currency) -> int:
    """Turn what a person types ("12.34", "12,34", "12") into minor units of ``cur``."""
    try:
        value = Decimal(text.strip().replace(",", "."))
    except InvalidOperation:
        raise BridgeError("invalid_amount", f"{text!r} is not an amount.") from None
    if not value.is_finite():
        raise BridgeError("invalid_amount", f"{text!r} is not an amount.")
    minor = value.scaleb(cur.exponent)
    if minor != minor.to_integral_value():
        raise BridgeError(
            "invalid_amount", f"{cur.code} amounts have at most {cur.exponent} decimal places."
        )
    return validate_amount(int(minor))


def format_major(amount: int, cur: Currency) -> str:
    """Minor units as a decimal string in major units: 1234 EUR -> "12.34"."""
    sign = "-" if amount < 0 else ""
    amount = abs(amount)
    if cur.exponent == 0:
        return f"{sign}{amount}"
    units, minor = divmod(amount, 10**cur.exponent)
    return f"{sign}{units}.{minor:0{cur.exponent}d}"
