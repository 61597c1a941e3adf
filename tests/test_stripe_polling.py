"""What polling costs: the driver's request schedule, counted against the fake on a virtual clock.

The driver learns a payment's outcome by reading the reader and the PaymentIntent every ``poll_interval`` (no
webhook reaches a shop's network: docs/stripe.md), and reads each reader every ``status_interval`` when idle.  These
tests run the real driver, the real stripe library and the fake over HTTP, with the driver's timers on a
``Clock`` advanced one second at a time once every driver is waiting, and count the requests of each second:
the figures in docs/performance.md ("Stripe polling") are these counts.
"""

from __future__ import annotations

from collections import Counter

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import Clock

from bridge.terminals.stripe.driver import StripeReaderDriver
from tests.stripe_support import SendRecorder, StripeTestCase

#: Stripe's documented limits (docs.stripe.com/rate-limits): per account and per endpoint, requests a second.
LIVE_LIMIT, SANDBOX_LIMIT, ENDPOINT_LIMIT = 100, 25, 25


class PollingCostTests(StripeTestCase):
    timeout = 60

    def drivers(self, count: int, clock: Clock) -> list:
        readers = [self.reader] + [self.fake.add_reader(f"WSC{n:012d}", label=f"Till {n + 1}")
                                   for n in range(1, count)]
        made = []
        for reader in readers:
            api = self.make_api(clock=clock)
            driver = StripeReaderDriver(reader["label"], reactor, api, reader_id=reader["id"], clock=clock,
                                        poll_interval=1.0, payment_timeout=120.0, status_interval=30.0)
            driver.start()
            self.addCleanup(driver.stop)
            made.append(driver)
        return made

    @staticmethod
    def waiting(drivers: list) -> bool:
        """No Stripe call under way, and every payment paused until its next poll."""
        return all(d.api._busy == 0 and (d._current is None or (d._current.wake is not None and
                                                                d._current.wake[1].active())) for d in drivers)

    @inlineCallbacks
    def run_seconds(self, drivers: list, clock: Clock, seconds: int) -> list:
        """Advance the drivers' clock one second at a time; the requests of each second, by endpoint."""
        per_second = []
        for _ in range(seconds):
            yield self.wait_for(lambda: self.waiting(drivers), "every driver waiting")
            before = len(self.fake.requests)
            clock.advance(1.0)
            yield self.wait_for(lambda: self.waiting(drivers), "every driver waiting")
            per_second.append(Counter(self.endpoint(r) for r in self.fake.requests[before:]))
        return per_second

    def endpoint(self, recorded) -> str:
        return self.answers.validator.operation(recorded.method, recorded.path)[0]

    @inlineCallbacks
    def test_a_waiting_payment_costs_one_reader_read_and_one_payment_intent_read_a_second(self):
        clock = Clock()
        [driver] = self.drivers(1, clock)
        yield self.wait_for(lambda: self.waiting([driver]), "the first status read")
        running = driver.pay(self.request(), SendRecorder(self.fake))
        yield self.wait_for(lambda: self.waiting([driver]), "the payment handed to the reader")
        self.assertEqual([self.endpoint(r) for r in self.fake.requests],
                         ["GET /v1/terminal/readers/{reader}", "POST /v1/payment_intents",
                          "POST /v1/terminal/readers/{reader}/process_payment_intent"])
        per_second = yield self.run_seconds([driver], clock, 119)
        # Every second: one read of the reader, one of the PaymentIntent; no status read on top (at 30, 60
        # and 90 s) while the payment's own polls read the reader anyway.
        for t, second in enumerate(per_second, start=1):
            self.assertEqual(second, {"GET /v1/terminal/readers/{reader}": 1,
                                      "GET /v1/payment_intents/{intent}": 1}, f"second {t}")
        self.assertEqual(driver.status().as_dict()["online"], True)  # the polls keep the status fresh
        clock.advance(1.0)  # the payment timeout: the reader is stopped, the PaymentIntent voided
        outcome = yield running
        self.assertEqual(outcome.code, "payment_timeout")

    @inlineCallbacks
    def test_ten_readers_waiting_at_once_stay_within_stripes_rate_limits(self):
        clock = Clock()
        drivers = self.drivers(10, clock)
        yield self.wait_for(lambda: self.waiting(drivers), "the first status reads")
        running = [d.pay(self.request(), SendRecorder(self.fake)) for d in drivers]
        per_second = yield self.run_seconds(drivers, clock, 31)
        # Every second of the wait, the 30th (when the ten status reads fall due) included: ten reader reads
        # and ten PaymentIntent reads, 20 requests: within the sandbox's 25 a second, a fifth of live mode's 100,
        # and each endpoint within its own 25.
        for t, second in enumerate(per_second, start=1):
            self.assertEqual(second, {"GET /v1/terminal/readers/{reader}": 10,
                                      "GET /v1/payment_intents/{intent}": 10}, f"second {t}")
            self.assertLessEqual(sum(second.values()), SANDBOX_LIMIT)
            self.assertLessEqual(sum(second.values()), LIVE_LIMIT / 5)
            self.assertLessEqual(max(second.values()), ENDPOINT_LIMIT)
        for driver in drivers:
            driver.cancel(driver._current.payment_id)
        yield self.wait_for(lambda: all(d._current is None or d._current.cancel_requested for d in drivers))
        clock.advance(1.0)
        outcomes = yield gatherResults(running)
        self.assertEqual({o.state for o in outcomes}, {"cancelled"})
