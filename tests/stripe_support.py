"""Shared set-up for the Stripe tests: the fake Stripe API on 127.0.0.1 and a driver using the real library."""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from bridge.core.money import CURRENCIES
from bridge.terminals.base import DEBIT, REFUND, PaymentRequest
from bridge.terminals.stripe.api import StripeAPI
from bridge.terminals.stripe.driver import StripeReaderDriver
from bridge.terminals.stripe.fake import FakeStripe

EUR = CURRENCIES["EUR"]
SERIAL = "WSC513105011295"
KEY = "sk_test_bridge"


def sleep(seconds: float) -> Deferred:
    return deferLater(reactor, seconds, lambda: None)


class SendRecorder:
    """A ``before_send`` that records the details it was given and what Stripe had seen by then."""

    def __init__(self, fake: FakeStripe, result: Optional[Deferred] = None) -> None:
        self.calls: list[dict] = []
        self.requests_before: list[list[str]] = []
        self._fake = fake
        self._result = result

    def __call__(self, details: Optional[dict] = None) -> Deferred:
        self.calls.append(dict(details or {}))
        self.requests_before.append([r.path for r in self._fake.requests])
        return self._result if self._result is not None else succeed(None)


class StripeTestCase(TestCase):
    timeout = 15

    @inlineCallbacks
    def setUp(self):
        self.fake = FakeStripe(reactor)
        yield self.fake.listen(reactor)
        self.addCleanup(self.fake.stop)
        self.reader = self.fake.add_reader(SERIAL, label="Till 1")
        self.knobs = self.fake.reader_knobs(self.reader["id"])
        self._count = 0

    def make_api(self, key: str = KEY, **options: Any) -> StripeAPI:
        settings = {"backoff": 0.01, "timeout": 5.0}
        settings.update(options)
        api = StripeAPI(reactor, key, api_base=self.fake.url, **settings)
        self.addCleanup(api.stop)
        return api

    def make_driver(self, key: str = KEY, by_serial: bool = True, **options: Any) -> StripeReaderDriver:
        settings = {"poll_interval": 0.02, "payment_timeout": 1.0, "cancel_grace": 0.5, "status_interval": 0}
        settings.update(options)
        api = self.make_api(key)
        driver = StripeReaderDriver("till-s", reactor, api,
                                    reader_id=None if by_serial else self.reader["id"],
                                    serial_number=SERIAL if by_serial else None, **settings)
        driver.start()
        self.addCleanup(driver.stop)
        return driver

    def request(self, amount: int = 1234, kind: str = DEBIT, original: Optional[dict] = None,
                currency=EUR) -> PaymentRequest:
        self._count += 1
        return PaymentRequest(f"pay_{self._count}_{id(self):x}", kind, amount, currency, original=original)

    def refund_request(self, paid: PaymentRequest, outcome: Any, amount: int) -> PaymentRequest:
        original = {"payment_id": paid.payment_id, "amount": paid.amount, "details": dict(outcome.details)}
        return self.request(amount, REFUND, original)

    def auto_present(self, card: str = "4242424242424242", delay: float = 0.05) -> None:
        self.knobs.auto_present, self.knobs.auto_present_delay = card, delay

    def paths(self, fragment: str = "", method: Optional[str] = None) -> list:
        return [r for r in self.fake.requests if fragment in r.path and (method is None or r.method == method)]

    def intent(self, pi_id: str) -> dict:
        return self.fake.intents[pi_id]

    @inlineCallbacks
    def wait_for(self, predicate, what: str = "condition"):
        for _ in range(400):
            if predicate():
                return
            yield sleep(0.01)
        self.fail(f"timed out waiting for {what}")
