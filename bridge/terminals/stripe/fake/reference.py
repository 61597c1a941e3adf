"""What Stripe's documentation gives the fake: API versions, test cards and amounts, minimums, the messages."""

from __future__ import annotations

#: The version that introduced ``latest_charge`` in place of ``charges``.
LATEST_CHARGE_VERSION = "2022-11-15"
API_ERROR_VERSION = "2026-05-27"
GUIDE = ("Reference the integration guide at https://stripe.com/docs/terminal/payments/collect-payment"
          "?terminal-sdk-platform=server-driven#handle-errors for details on how to handle this error.")
DOC = "https://stripe.com/docs/error-codes/"

#: Minimum charge per currency (minor units), as Stripe enforces it.
MINIMUMS = {"usd": 50, "eur": 50, "cad": 50, "aud": 50, "chf": 50, "nzd": 50, "sgd": 50, "gbp": 30, "dkk": 250,
            "nok": 300, "sek": 300, "hkd": 400, "jpy": 50, "mxn": 1000}

#: Test cards (docs.stripe.com/terminal/references/testing): number -> (brand, outcome code, decline code).
TEST_CARDS = {
    "4242424242424242": ("visa", None, None),
    "5555555555554444": ("mastercard", None, None),
    "4001007020000002": ("visa", None, None),  # offline PIN
    "4001000360000005": ("visa", None, None),  # online PIN
    "4000000000005126": ("visa", None, None),  # refunds fail asynchronously
    "4000000000000002": ("visa", "card_declined", "generic_decline"),
    "4000000000009995": ("visa", "card_declined", "insufficient_funds"),
    "4000000000009987": ("visa", "card_declined", "lost_card"),
    "4000000000009979": ("visa", "card_declined", "stolen_card"),
    "4000000000000069": ("visa", "expired_card", "expired_card"),
    "4000000000000119": ("visa", "processing_error", None),
}
#: Test amounts: the two right-most digits of the amount -> decline code (other endings approve).
TEST_AMOUNTS = {1: "call_issuer", 2: "offline_pin_required", 3: "online_or_offline_pin_required",
                5: "generic_decline", 55: "incorrect_pin", 65: "withdrawal_count_limit_exceeded",
                75: "pin_try_exceeded"}
DECLINE_MESSAGES = {
    "insufficient_funds": "Your card has insufficient funds.",
    "lost_card": "Your card was declined.",
    "stolen_card": "Your card was declined.",
    "expired_card": "Your card has expired.",
    "processing_error": "An error occurred while processing your card. Try again in a little bit.",
    "incorrect_pin": "The PIN entered is incorrect.",
    "pin_try_exceeded": "The allowable number of PIN tries has been exceeded.",
}


def no_billing_details() -> dict:
    """A card read at a reader carries no billing details: every field is there, null."""
    return {"address": {"city": None, "country": None, "line1": None, "line2": None, "postal_code": None,
                        "state": None}, "email": None, "name": None, "phone": None}


#: What Stripe says with each Terminal error code (docs.stripe.com/error-codes).
TERMINAL_MESSAGES = {
    "terminal_location_country_unsupported": "Terminal is currently only available in some countries. Locations "
                                             "in your country cannot be created in livemode.",
    "terminal_reader_busy": "Reader is currently busy processing another request.",
    "terminal_reader_hardware_fault": "Reader has encountered a hardware fault.",
    "terminal_reader_invalid_location_for_activation": "The card reader cannot be activated in this location.",
    "terminal_reader_invalid_location_for_payment": "The card reader cannot process payments in this location.",
    "terminal_reader_offline": "Reader is currently offline.",
    "terminal_reader_timeout": "There was a timeout when sending this command to the reader.",
}
SIMULATED_CODES = {"simulated-wpe": "simulated_wisepos_e", "simulated-s700": "simulated_stripe_s700",
                   "simulated-s710": "simulated_stripe_s710"}
