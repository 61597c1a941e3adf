"""A small, stateful fake of Stripe's API for Terminal payments: the tests and the demo talk to it over HTTP.

It follows §5 of ../shared/protocols/stripe-terminal.md (see docs/stripe.md for what it covers): form-encoded
bodies as stripe-python 5.0 and 16.x send them, Bearer and Basic auth with test keys, locations, readers
(simulated registration codes), PaymentIntents with manual capture, ``process_payment_intent``,
``cancel_action``, refunds, the ``present_payment_method`` test helper with Stripe's test cards and test amounts,
idempotency replay and mismatch errors, and Stripe's error bodies.

Test knobs never sit under ``/v1``: call them on :class:`FakeStripe` directly, or ``POST /_fake/...`` with a
JSON body from another process (``terminal-bridge simulate stripe``).  Loopback only.

One module per job: :mod:`.model` (the account's objects and the API's routes: locations, readers, PaymentIntents,
refunds), :mod:`.edge` (a request as Stripe's edge takes it: recorded, failed on purpose, authenticated,
replayed from its idempotency key), :mod:`.wire` (form bodies, parameter checks and error bodies, as Stripe has them),
:mod:`.reference` (what Stripe's documentation gives: test cards and amounts, minimums, messages, versions),
:mod:`.knobs` (what a test turns: a reader's behaviour, failures to inject, the ``/_fake/...`` routes) and
:mod:`.http` (the twisted.web face).  Its command line (``simulate stripe``) is in :mod:`bridge.cli.simulators`.
"""

from bridge.terminals.stripe.fake.knobs import ReaderKnobs
from bridge.terminals.stripe.fake.model import FakeStripe
from bridge.terminals.stripe.fake.edge import Recorded
from bridge.terminals.stripe.fake.reference import (API_ERROR_VERSION, LATEST_CHARGE_VERSION, MINIMUMS,
                                                    SIMULATED_CODES, TEST_AMOUNTS, TEST_CARDS)
from bridge.terminals.stripe.fake.wire import ApiError, decode_form

__all__ = ["API_ERROR_VERSION", "LATEST_CHARGE_VERSION", "MINIMUMS", "SIMULATED_CODES", "TEST_AMOUNTS", "TEST_CARDS",
           "ApiError", "FakeStripe", "ReaderKnobs", "Recorded", "decode_form"]
