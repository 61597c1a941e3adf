"""The Stripe reader driver: the real stripe library (5.0 or 16.x) against the fake Stripe API over real HTTP."""

from __future__ import annotations

import json
import re

import stripe
from twisted.internet.defer import fail, inlineCallbacks
from twisted.logger import globalLogPublisher
from twisted.python import threadable
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from bridge.errors import BridgeError
from bridge.core.contract import ITerminalDriver
from bridge.terminals.stripe.api import _E, MESSAGES, TERMINAL_CODES, map_error
from tests.stripe_support import SERIAL, SendRecorder, StripeTestCase, sleep


class PaymentTests(StripeTestCase):
    @inlineCallbacks
    def test_an_approved_payment_is_captured_then_approved(self):
        self.auto_present()
        driver = self.make_driver()
        verifyObject(ITerminalDriver, driver)
        send = SendRecorder(self.fake)
        outcome = yield driver.pay(self.request(1234), send)
        self.assertEqual((outcome.state, outcome.code), ("approved", "approved"))
        pi_id = outcome.details["payment_intent"]
        self.assertEqual(send.calls, [{"payment_intent": pi_id, "reader": self.reader["id"]}])
        # journaled in_progress after the PaymentIntent exists, before the reader got anything
        self.assertTrue(any(p == "/v1/payment_intents" for p in send.requests_before[0]))
        self.assertFalse(any("process_payment_intent" in p for p in send.requests_before[0]))
        pi = self.intent(pi_id)
        self.assertEqual((pi["status"], pi["capture_method"], pi["amount_received"]), ("succeeded", "manual", 1234))
        self.assertEqual(pi["metadata"], {"payment_id": self._last_id()})
        self.assertEqual(pi["payment_method_types"], ["card_present"])
        self.assertEqual(outcome.details["card_masked"], "############4242")
        self.assertEqual(outcome.details["card_brand"], "visa")
        self.assertRegex(outcome.details["authorisation"], r"^\d{6}$")
        self.assertEqual(len(self.paths("/capture", "POST")), 1)
        create = self.paths("/v1/payment_intents", "POST")[0]
        self.assertEqual(create.idempotency_key, f"tb-{self._last_id()}-pi")
        self.assertTrue(all(r.stripe_version == "2024-06-20" for r in self.fake.requests))

    def _last_id(self):
        return f"pay_{self._count}_{id(self):x}"

    @inlineCallbacks
    def test_each_test_card_decline_is_declined_with_code_and_message_and_the_intent_voided(self):
        driver = self.make_driver()
        cases = {"4000000000000002": "generic_decline", "4000000000009995": "insufficient_funds",
                 "4000000000009987": "lost_card", "4000000000000069": "expired_card"}
        for card, decline in cases.items():
            self.auto_present(card, 0.02)
            outcome = yield driver.pay(self.request(1234), SendRecorder(self.fake))
            self.assertEqual((outcome.state, outcome.code), ("declined", "card_declined"), card)
            self.assertEqual(outcome.details["decline_code"], decline)
            self.assertIn("The card was declined:", outcome.message)
            self.assertEqual(self.intent(outcome.details["payment_intent"])["status"], "canceled")
        self.assertEqual(self.paths("/capture"), [])

    @inlineCallbacks
    def test_insufficient_funds_carries_stripes_message(self):
        self.auto_present("4000000000009995", 0.02)
        outcome = yield self.make_driver().pay(self.request(), SendRecorder(self.fake))
        self.assertEqual(outcome.message, "The card was declined: Your card has insufficient funds.")

    @inlineCallbacks
    def test_test_amounts_decline_by_their_last_two_digits(self):
        driver = self.make_driver()
        for amount, decline in ((1205, "generic_decline"), (1255, "incorrect_pin"), (1275, "pin_try_exceeded")):
            self.auto_present(delay=0.02)
            outcome = yield driver.pay(self.request(amount), SendRecorder(self.fake))
            self.assertEqual(outcome.state, "declined")
            self.assertEqual(outcome.details["decline_code"], decline)

    @inlineCallbacks
    def test_processing_error_is_a_decline_without_capture(self):
        self.auto_present("4000000000000119", 0.02)
        outcome = yield self.make_driver().pay(self.request(), SendRecorder(self.fake))
        self.assertEqual(outcome.state, "declined")
        self.assertEqual(outcome.details["stripe_code"], "processing_error")
        self.assertEqual(self.paths("/capture"), [])

    @inlineCallbacks
    def test_the_customer_cancelling_on_the_reader(self):
        driver = self.make_driver()
        running = driver.pay(self.request(), SendRecorder(self.fake))
        yield self.wait_for(lambda: self.fake.readers[self.reader["id"]]["action"], "the reader action")
        self.fake.customer_cancel(self.reader["id"])
        outcome = yield running
        self.assertEqual((outcome.state, outcome.code), ("cancelled", "customer_cancelled"))
        self.assertEqual(self.intent(outcome.details["payment_intent"])["status"], "canceled")

    @inlineCallbacks
    def test_amount_below_stripes_minimum_is_refused_before_any_call(self):
        driver = self.make_driver()
        send = SendRecorder(self.fake)
        outcome = yield driver.pay(self.request(49), send)
        self.assertEqual((outcome.state, outcome.code), ("failed", "amount_too_small"))
        self.assertIn("0.50 EUR", outcome.message)
        self.assertEqual(self.fake.requests, [])
        self.assertEqual(send.calls, [])

    @inlineCallbacks
    def test_a_second_payment_while_one_runs_is_refused(self):
        driver = self.make_driver()
        running = driver.pay(self.request(), SendRecorder(self.fake))
        second = yield driver.pay(self.request(), SendRecorder(self.fake))
        self.assertEqual((second.state, second.code), ("failed", "terminal_busy"))
        yield self.wait_for(lambda: self.fake.readers[self.reader["id"]]["action"], "the reader action")
        self.fake.present(self.reader["id"])
        outcome = yield running
        self.assertEqual(outcome.state, "approved")

    @inlineCallbacks
    def test_a_failing_before_send_sends_nothing_to_the_reader_and_voids_the_intent(self):
        driver = self.make_driver()
        refusal = fail(BridgeError("cancelled_before_send", "Cancelled before sending."))
        outcome = yield driver.pay(self.request(), SendRecorder(self.fake, refusal))
        self.assertEqual((outcome.state, outcome.code), ("failed", "cancelled_before_send"))
        self.assertEqual(self.paths("process_payment_intent"), [])
        self.assertEqual([pi["status"] for pi in self.fake.intents.values()], ["canceled"])


class CaptureTests(StripeTestCase):
    @inlineCallbacks
    def test_capture_failing_is_never_approved_and_releases_the_authorisation(self):
        self.auto_present()
        self.fake.fail_next(count=50, status=500, match="/capture")
        outcome = yield self.make_driver().pay(self.request(), SendRecorder(self.fake))
        self.assertEqual((outcome.state, outcome.code), ("failed", "capture_failed"))
        self.assertEqual(self.intent(outcome.details["payment_intent"])["status"], "canceled")

    @inlineCallbacks
    def test_a_capture_answered_without_succeeded_is_not_approved(self):
        self.auto_present()
        self.fake.capture_status = "processing"
        outcome = yield self.make_driver().pay(self.request(), SendRecorder(self.fake))
        self.assertEqual((outcome.state, outcome.code), ("unknown", "capture_unconfirmed"))
        self.assertEqual(outcome.details["stripe_status"], "processing")
        self.assertIn("Stripe Dashboard", outcome.message)

    @inlineCallbacks
    def test_5xx_on_capture_is_retried_with_the_same_idempotency_key(self):
        self.auto_present()
        self.fake.fail_next(count=2, status=503, match="/capture")
        outcome = yield self.make_driver().pay(self.request(), SendRecorder(self.fake))
        self.assertEqual(outcome.state, "approved")
        captures = self.paths("/capture", "POST")
        self.assertEqual(len(captures), 3)
        self.assertEqual(len({c.idempotency_key for c in captures}), 1)

    @inlineCallbacks
    def test_a_capture_answer_lost_after_the_commit_is_replayed_not_repeated(self):
        self.auto_present()
        self.fake.drop_next("/capture")
        outcome = yield self.make_driver().pay(self.request(), SendRecorder(self.fake))
        self.assertEqual(outcome.state, "approved")
        captures = self.paths("/capture", "POST")
        self.assertEqual(len(captures), 2)
        self.assertEqual(captures[0].idempotency_key, captures[1].idempotency_key)
        pi = self.intent(outcome.details["payment_intent"])
        self.assertEqual(pi["amount_received"], 1234)

    @inlineCallbacks
    def test_a_stored_500_on_capture_is_never_approved_and_the_authorisation_is_released(self):
        # Stripe stored a 500 under the capture's key before capturing: every retry with that key gets it
        # again; the PaymentIntent, read afterwards, is still uncaptured.
        self.auto_present()
        self.fake.fail_inside(match="/capture")
        outcome = yield self.make_driver().pay(self.request(), SendRecorder(self.fake))
        self.assertEqual((outcome.state, outcome.code), ("failed", "capture_failed"))
        self.assertEqual(self.intent(outcome.details["payment_intent"])["status"], "canceled")
        captures = self.paths("/capture", "POST")
        self.assertEqual(len(captures), 4)  # the first and three retries, all answered from the store
        self.assertEqual(len({c.idempotency_key for c in captures}), 1)

    @inlineCallbacks
    def test_a_stored_500_after_the_capture_is_approved_from_the_payment_intent(self):
        self.auto_present()
        self.fake.fail_inside(match="/capture", after_commit=True)
        outcome = yield self.make_driver().pay(self.request(), SendRecorder(self.fake))
        self.assertEqual((outcome.state, outcome.code), ("approved", "approved"))
        pi = self.intent(outcome.details["payment_intent"])
        self.assertEqual((pi["status"], pi["amount_received"]), ("succeeded", 1234))
        self.assertEqual(outcome.details["card_masked"], "############4242")

    @inlineCallbacks
    def test_rate_limits_are_retried_with_the_same_key(self):
        self.auto_present()
        self.fake.fail_next(count=2, status=429, match="/v1/payment_intents")
        outcome = yield self.make_driver().pay(self.request(), SendRecorder(self.fake))
        self.assertEqual(outcome.state, "approved")
        creates = [r for r in self.paths("/v1/payment_intents", "POST") if r.path == "/v1/payment_intents"]
        self.assertEqual(len(creates), 3)
        self.assertEqual(len({c.idempotency_key for c in creates}), 1)
        self.assertEqual(len(self.fake.intents), 1)


class ReaderErrorTests(StripeTestCase):
    @inlineCallbacks
    def test_an_offline_reader_fails_the_payment_and_nothing_is_charged(self):
        self.fake.set_online(self.reader["id"], False)
        outcome = yield self.make_driver().pay(self.request(), SendRecorder(self.fake))
        self.assertEqual((outcome.state, outcome.code), ("failed", "reader_offline"))
        self.assertIn("switched on", outcome.message)
        self.assertIn("Nothing was charged", outcome.message)
        self.assertEqual(self.intent(outcome.details["payment_intent"])["status"], "canceled")

    @inlineCallbacks
    def test_a_reader_going_offline_mid_payment_ends_it_at_once_and_nothing_is_charged(self):
        driver = self.make_driver(payment_timeout=120.0)  # the old driver waited this long: the test timed out
        running = driver.pay(self.request(), SendRecorder(self.fake))
        yield self.wait_for(lambda: self.fake.readers[self.reader["id"]]["action"], "the reader action")
        self.fake.set_online(self.reader["id"], False)
        outcome = yield running
        self.assertEqual((outcome.state, outcome.code), ("failed", "reader_offline"))
        self.assertEqual(outcome.message, "The card reader went offline during the payment, so the payment was "
                                          "stopped. Nothing was charged. Check that the reader is switched on and "
                                          "connected to the internet, then try again.")
        self.assertEqual(self.intent(outcome.details["payment_intent"])["status"], "canceled")

    @inlineCallbacks
    def test_a_reader_gone_offline_with_stripe_unable_to_void_is_unknown(self):
        driver = self.make_driver(payment_timeout=120.0)
        running = driver.pay(self.request(), SendRecorder(self.fake))
        yield self.wait_for(lambda: self.fake.readers[self.reader["id"]]["action"], "the reader action")
        self.fake.fail_next(count=1000, status=503, match="/cancel")
        self.fake.set_online(self.reader["id"], False)
        outcome = yield running
        self.assertEqual((outcome.state, outcome.code), ("unknown", "stripe_unavailable"))
        self.assertIn("Stripe Dashboard", outcome.message)

    @inlineCallbacks
    def test_a_card_authorised_before_the_reader_went_offline_is_captured(self):
        self.knobs.lose_completion = True
        driver = self.make_driver(poll_interval=0.2)
        running = driver.pay(self.request(), SendRecorder(self.fake))
        yield self.wait_for(lambda: self.fake.readers[self.reader["id"]]["action"], "the reader action")
        self.fake.present(self.reader["id"])
        self.fake.set_online(self.reader["id"], False)
        outcome = yield running
        self.assertEqual(outcome.state, "approved")

    @inlineCallbacks
    def test_a_decline_just_before_the_reader_went_offline_is_reported_as_the_decline(self):
        driver = self.make_driver(poll_interval=0.2)
        running = driver.pay(self.request(), SendRecorder(self.fake))
        yield self.wait_for(lambda: self.fake.readers[self.reader["id"]]["action"], "the reader action")
        self.fake.present(self.reader["id"], "4000000000009995")
        self.fake.set_online(self.reader["id"], False)
        outcome = yield running
        self.assertEqual((outcome.state, outcome.details["decline_code"]), ("declined", "insufficient_funds"))

    @inlineCallbacks
    def test_reader_errors_get_a_sentence_the_cashier_can_act_on(self):
        driver = self.make_driver()
        cases = {"terminal_reader_hardware_fault": ("reader_hardware_fault", "hardware fault"),
                 "terminal_reader_invalid_location_for_payment": ("reader_location_invalid", "Stripe Dashboard"),
                 "terminal_location_country_unsupported": ("location_country_unsupported", "Stripe Dashboard")}
        for stripe_code, (code, words) in cases.items():
            self.knobs.error = stripe_code
            outcome = yield driver.pay(self.request(), SendRecorder(self.fake))
            self.assertEqual((outcome.state, outcome.code), ("failed", code), stripe_code)
            self.assertIn(words, outcome.message)
            self.assertNotIn("Stripe refused the request", outcome.message)
            self.assertIn("Nothing was charged", outcome.message)
            self.assertEqual(self.intent(outcome.details["payment_intent"])["status"], "canceled")

    @inlineCallbacks
    def test_a_hardware_fault_during_the_payment_is_a_reader_failure_not_a_decline(self):
        driver = self.make_driver()
        running = driver.pay(self.request(), SendRecorder(self.fake))
        yield self.wait_for(lambda: self.fake.readers[self.reader["id"]]["action"], "the reader action")
        self.fake.fail_action(self.reader["id"], "terminal_reader_hardware_fault")
        outcome = yield running
        self.assertEqual((outcome.state, outcome.code), ("failed", "reader_hardware_fault"))
        self.assertIn("hardware fault", outcome.message)
        self.assertEqual(self.intent(outcome.details["payment_intent"])["status"], "canceled")

    @inlineCallbacks
    def test_a_busy_reader_is_asked_again_with_a_new_key(self):
        self.auto_present()
        self.knobs.busy = 2
        outcome = yield self.make_driver().pay(self.request(), SendRecorder(self.fake))
        self.assertEqual(outcome.state, "approved")
        keys = [r.idempotency_key for r in self.paths("process_payment_intent")]
        self.assertEqual(len(keys), 3)
        self.assertEqual(len(set(keys)), 3)

    @inlineCallbacks
    def test_a_reader_busy_for_good_fails_the_payment(self):
        self.knobs.busy = 100
        outcome = yield self.make_driver().pay(self.request(), SendRecorder(self.fake))
        self.assertEqual((outcome.state, outcome.code), ("failed", "reader_busy"))

    @inlineCallbacks
    def test_a_timeout_that_was_a_false_negative_is_not_sent_twice(self):
        self.auto_present()
        self.knobs.timeout_false_negative = 1
        outcome = yield self.make_driver().pay(self.request(), SendRecorder(self.fake))
        self.assertEqual(outcome.state, "approved")
        self.assertEqual(len(self.paths("process_payment_intent")), 1)
        self.assertTrue(self.paths(f"/v1/terminal/readers/{self.reader['id']}", "GET"))

    @inlineCallbacks
    def test_a_real_timeout_is_retried_with_a_new_key(self):
        self.auto_present()
        self.knobs.timeout = 1
        outcome = yield self.make_driver().pay(self.request(), SendRecorder(self.fake))
        self.assertEqual(outcome.state, "approved")
        keys = [r.idempotency_key for r in self.paths("process_payment_intent")]
        self.assertEqual(len(keys), 2)
        self.assertNotEqual(keys[0], keys[1])

    @inlineCallbacks
    def test_a_lost_completion_is_found_through_the_payment_intent(self):
        self.auto_present()
        self.knobs.lose_completion = True
        outcome = yield self.make_driver().pay(self.request(), SendRecorder(self.fake))
        self.assertEqual(outcome.state, "approved")
        self.assertEqual(self.fake.readers[self.reader["id"]]["action"]["status"], "in_progress")

    @inlineCallbacks
    def test_no_card_within_the_cap_cancels_the_action_and_voids_the_intent(self):
        outcome = yield self.make_driver(payment_timeout=0.2).pay(self.request(), SendRecorder(self.fake))
        self.assertEqual((outcome.state, outcome.code), ("cancelled", "payment_timeout"))
        self.assertEqual(len(self.paths("cancel_action")), 1)
        self.assertIsNone(self.fake.readers[self.reader["id"]]["action"])
        self.assertEqual(self.intent(outcome.details["payment_intent"])["status"], "canceled")

    @inlineCallbacks
    def test_stripe_unreachable_at_the_cap_is_unknown(self):
        driver = self.make_driver(payment_timeout=0.2)
        running = driver.pay(self.request(), SendRecorder(self.fake))
        yield self.wait_for(lambda: self.fake.readers[self.reader["id"]]["action"], "the reader action")
        self.fake.fail_next(count=1000, status=503)
        outcome = yield running
        self.assertEqual(outcome.state, "unknown")
        self.assertIn("Stripe Dashboard", outcome.message)

    @inlineCallbacks
    def test_a_rejected_key_is_named_a_configuration_error(self):
        self.fake.keys = {"sk_test_right"}
        outcome = yield self.make_driver("sk_test_wrong").pay(self.request(), SendRecorder(self.fake))
        self.assertEqual((outcome.state, outcome.code), ("failed", "stripe_auth_failed"))
        self.assertIn("configuration error", outcome.message)

    @inlineCallbacks
    def test_a_key_without_the_rights_is_named_a_configuration_error(self):
        self.fake.forbidden_keys = {"rk_test_narrow"}
        outcome = yield self.make_driver("rk_test_narrow").pay(self.request(), SendRecorder(self.fake))
        self.assertEqual((outcome.state, outcome.code), ("failed", "stripe_permission_denied"))
        self.assertIn("configuration error", outcome.message)

    @inlineCallbacks
    def test_an_unknown_serial_number_is_a_configuration_error(self):
        driver = self.make_driver()
        driver._serial = "NOPE"
        send = SendRecorder(self.fake)
        outcome = yield driver.pay(self.request(), send)
        self.assertEqual((outcome.state, outcome.code), ("failed", "reader_not_found"))
        self.assertEqual(send.calls, [])


class CancelTests(StripeTestCase):
    @inlineCallbacks
    def test_cancel_before_the_card_stops_the_reader(self):
        driver = self.make_driver()
        request = self.request()
        running = driver.pay(request, SendRecorder(self.fake))
        yield self.wait_for(lambda: self.fake.readers[self.reader["id"]]["action"], "the reader action")
        words = yield driver.cancel(request.payment_id)
        self.assertEqual(words, "The reader stopped the payment.")
        outcome = yield running
        self.assertEqual((outcome.state, outcome.code), ("cancelled", "cancelled"))
        self.assertEqual(self.intent(outcome.details["payment_intent"])["status"], "canceled")

    @inlineCallbacks
    def test_cancel_while_the_card_is_authorised_is_too_late_and_the_payment_completes(self):
        self.knobs.auth_latency = 0.3
        driver = self.make_driver()
        request = self.request()
        running = driver.pay(request, SendRecorder(self.fake))
        yield self.wait_for(lambda: self.fake.readers[self.reader["id"]]["action"], "the reader action")
        self.fake.present(self.reader["id"])
        words = yield driver.cancel(request.payment_id)
        self.assertIn("too late to cancel", words)
        outcome = yield running
        self.assertEqual(outcome.state, "approved")

    @inlineCallbacks
    def test_the_payment_can_win_the_race_with_cancel(self):
        # Authorised, but the reader's action still shows in progress: cancel_action succeeds, the
        # re-read PaymentIntent shows the truth.
        self.knobs.lose_completion = True
        driver = self.make_driver(poll_interval=5.0)
        request = self.request()
        running = driver.pay(request, SendRecorder(self.fake))
        yield self.wait_for(lambda: self.fake.readers[self.reader["id"]]["action"], "the reader action")
        self.fake.present(self.reader["id"])
        words = yield driver.cancel(request.payment_id)
        self.assertIn("Too late to cancel", words)
        outcome = yield running
        self.assertEqual(outcome.state, "approved")
        self.assertEqual(self.intent(outcome.details["payment_intent"])["status"], "succeeded")

    @inlineCallbacks
    def test_cancel_of_another_payment_changes_nothing(self):
        driver = self.make_driver()
        words = yield driver.cancel("pay_other")
        self.assertEqual(words, "This payment is not running on the reader.")
        self.assertEqual(self.fake.requests, [])


class RefundTests(StripeTestCase):
    @inlineCallbacks
    def paid(self, driver, amount=1234):
        self.auto_present(delay=0.02)
        request = self.request(amount)
        outcome = yield driver.pay(request, SendRecorder(self.fake))
        self.assertEqual(outcome.state, "approved")
        return request, outcome

    @inlineCallbacks
    def test_a_full_refund(self):
        driver = self.make_driver()
        request, outcome = yield self.paid(driver)
        send = SendRecorder(self.fake)
        refund = yield driver.pay(self.refund_request(request, outcome, 1234), send)
        self.assertEqual((refund.state, refund.details["refund_status"]), ("approved", "succeeded"))
        self.assertEqual(send.calls[0]["payment_intent"], outcome.details["payment_intent"])
        made = self.fake.refunds[refund.details["refund"]]
        self.assertEqual((made["amount"], made["payment_intent"]), (1234, outcome.details["payment_intent"]))

    @inlineCallbacks
    def test_partial_refunds_up_to_the_amount_paid(self):
        driver = self.make_driver()
        request, outcome = yield self.paid(driver)
        first = yield driver.pay(self.refund_request(request, outcome, 500), SendRecorder(self.fake))
        second = yield driver.pay(self.refund_request(request, outcome, 734), SendRecorder(self.fake))
        self.assertEqual((first.state, second.state), ("approved", "approved"))
        third = yield driver.pay(self.refund_request(request, outcome, 1), SendRecorder(self.fake))
        self.assertEqual((third.state, third.code), ("failed", "amount_too_large"))
        self.assertIn("Nothing was refunded", third.message)
        self.assertEqual(sum(r["amount"] for r in self.fake.refunds.values()), 1234)

    @inlineCallbacks
    def test_a_refund_without_the_original_payment_is_refused_clearly(self):
        driver = self.make_driver()
        send = SendRecorder(self.fake)
        outcome = yield driver.pay(self.request(500, "refund"), send)
        self.assertEqual((outcome.state, outcome.code), ("failed", "refund_needs_original"))
        self.assertEqual((send.calls, self.fake.requests), ([], []))


class RecoveryTests(StripeTestCase):
    """After a crash mid-payment: the journal has the PaymentIntent id; Stripe says what became of it."""

    @inlineCallbacks
    def intent_in(self, api, state):
        pi = yield api.create_payment_intent(1234, "EUR", "pay_crashed", "tb-pay_crashed-pi")
        if state == "requires_payment_method":
            return pi["id"]
        yield api.process_payment_intent(self.reader["id"], pi["id"], "k-ppi")
        if state == "in_progress":
            return pi["id"]
        self.fake.present(self.reader["id"], "4000000000000002" if state == "declined" else "4242424242424242")
        if state == "succeeded":
            yield api.capture(pi["id"], "k-cap")
        if state == "canceled":
            yield api.cancel_payment_intent(pi["id"], "k-void")
        return pi["id"]

    @inlineCallbacks
    def recover(self, state):
        driver = self.make_driver()
        pi_id = yield self.intent_in(driver.api, state)
        outcome = yield driver.recover("pay_crashed", {"payment_intent": pi_id, "reader": self.reader["id"]})
        return outcome, self.intent(pi_id)

    @inlineCallbacks
    def test_succeeded_is_approved(self):
        outcome, pi = yield self.recover("succeeded")
        self.assertEqual(outcome.state, "approved")
        self.assertEqual(len(self.paths("/capture")), 1)

    @inlineCallbacks
    def test_requires_capture_is_captured_then_approved(self):
        outcome, pi = yield self.recover("requires_capture")
        self.assertEqual((outcome.state, pi["status"]), ("approved", "succeeded"))
        self.assertEqual(self.paths("/capture")[0].idempotency_key, "tb-pay_crashed-capture")

    @inlineCallbacks
    def test_canceled_is_cancelled(self):
        outcome, pi = yield self.recover("canceled")
        self.assertEqual(outcome.state, "cancelled")

    @inlineCallbacks
    def test_a_decline_is_declined(self):
        outcome, pi = yield self.recover("declined")
        self.assertEqual((outcome.state, outcome.details["decline_code"]), ("declined", "generic_decline"))
        self.assertEqual(pi["status"], "canceled")

    @inlineCallbacks
    def test_a_reader_still_waiting_is_stopped_and_nothing_charged(self):
        outcome, pi = yield self.recover("in_progress")
        self.assertEqual((outcome.state, outcome.code), ("cancelled", "bridge_restarted"))
        self.assertEqual(pi["status"], "canceled")
        self.assertIsNone(self.fake.readers[self.reader["id"]]["action"])

    @inlineCallbacks
    def test_unknown_only_when_stripe_cannot_say(self):
        driver = self.make_driver()
        pi_id = yield self.intent_in(driver.api, "requires_capture")
        self.fake.fail_next(count=1000, status=503)
        outcome = yield driver.recover("pay_crashed", {"payment_intent": pi_id})
        self.assertIsNone(outcome)
        no_pi = yield driver.recover("pay_crashed", {})
        self.assertIsNone(no_pi)

    @inlineCallbacks
    def test_a_refund_is_found_or_known_not_made(self):
        driver = self.make_driver()
        pi_id = yield self.intent_in(driver.api, "succeeded")
        missing = yield driver.recover("pay_refund", {"payment_intent": pi_id, "refund_key": "tb-pay_refund-refund"})
        self.assertEqual((missing.state, missing.code), ("failed", "refund_not_sent"))
        yield driver.api.create_refund(pi_id, 300, "pay_refund", "tb-pay_refund-refund")
        found = yield driver.recover("pay_refund", {"payment_intent": pi_id, "refund_key": "tb-pay_refund-refund"})
        self.assertEqual((found.state, found.details["amount_refunded"]), ("approved", 300))


class StatusAndLookupTests(StripeTestCase):
    @inlineCallbacks
    def test_the_serial_number_is_looked_up_once(self):
        driver = self.make_driver()
        for _ in range(2):
            self.auto_present(delay=0.02)
            outcome = yield driver.pay(self.request(), SendRecorder(self.fake))
            self.assertEqual(outcome.state, "approved")
        yield driver.refresh_status()
        lookups = [r for r in self.fake.requests if r.path == "/v1/terminal/readers"]
        self.assertEqual(len(lookups), 1)
        self.assertEqual(lookups[0].params["serial_number"], SERIAL)

    @inlineCallbacks
    def test_status_shows_the_reader_from_the_cached_read(self):
        driver = self.make_driver()
        self.assertEqual(driver.status().as_dict()["state"], "unknown")
        yield driver.refresh_status()
        status = driver.status().as_dict()
        self.assertEqual((status["state"], status["online"], status["serial_number"], status["label"]),
                         ("idle", True, SERIAL, "Till 1"))
        self.assertEqual(status["device_type"], "simulated_wisepos_e")
        self.assertRegex(status["last_seen"], r"^\d{4}-\d\d-\d\dT")
        before = len(self.fake.requests)
        driver.status().as_dict()
        self.assertEqual(len(self.fake.requests), before)
        self.fake.set_online(self.reader["id"], False)
        yield driver.refresh_status()
        self.assertEqual((driver.status().state, driver.status().facts["online"], driver.status().up),
                         ("offline", False, False))

    @inlineCallbacks
    def test_status_is_refreshed_on_a_timer(self):
        driver = self.make_driver(status_interval=0.05)
        yield self.wait_for(lambda: len(self.paths(self.reader["id"], "GET")) >= 2, "two status reads")
        self.assertEqual(driver.status().as_dict()["state"], "idle")

    @inlineCallbacks
    def test_stripe_calls_never_run_on_the_reactor_thread(self):
        self.auto_present()
        driver = self.make_driver()
        seen = []
        perform = driver.api._requestor.perform

        def recording(*args):
            seen.append(threadable.isInIOThread())
            return perform(*args)

        driver.api._requestor.perform = recording
        outcome = yield driver.pay(self.request(), SendRecorder(self.fake))
        self.assertEqual(outcome.state, "approved")
        self.assertTrue(threadable.isInIOThread())
        self.assertGreater(len(seen), 4)
        self.assertNotIn(True, seen)

    @inlineCallbacks
    def test_stopping_the_driver_stops_its_threads(self):
        driver = self.make_driver()
        yield driver.refresh_status()
        self.assertTrue(driver.api.running)
        driver.stop()
        self.assertFalse(driver.api.running)
        yield sleep(0)


class TerminalErrorCodeTests(TestCase):
    """Every Terminal error code Stripe lists has the bridge's own code and a sentence for the cashier."""

    def stripe_error(self, code):
        body = {"error": {"type": "invalid_request_error", "code": code, "message": "Stripe's words."}}
        return _E.InvalidRequestError("Stripe's words.", None, code=code, http_status=400, json_body=body)

    def test_every_terminal_code_is_mapped_to_a_sentence(self):
        codes = set(TERMINAL_CODES)
        error_class = getattr(getattr(stripe, "PaymentIntent", None), "LastPaymentError", None)
        if error_class is not None:  # stripe-python 16 lists them in last_payment_error.code
            listed = set(re.findall(r"[\"'](terminal_[a-z_]+)[\"']", str(error_class.__annotations__["code"])))
            self.assertGreaterEqual(len(listed), 7)
            codes |= listed
        self.assertGreaterEqual(codes, {"terminal_reader_hardware_fault",
                                        "terminal_reader_invalid_location_for_payment"})
        for code in sorted(codes):
            mapped = map_error(self.stripe_error(code))
            self.assertNotEqual(mapped.code, "stripe_error", code)
            self.assertNotEqual(mapped.message, MESSAGES["stripe_error"], code)
            self.assertEqual(mapped.message, MESSAGES[mapped.code])



class Reshaper:
    """Answers of the wrong shape from "Stripe": rewrites the fake's 200 answers to matching requests, after the
    OpenAPI checker has seen the fake's own answer (the fake stays true to Stripe; the wire does not)."""

    def __init__(self, fake):
        self._handle = fake.handle
        fake.handle = self.handle
        self._rules = []

    def reshape(self, method, fragment, change, count=1000):
        self._rules.append([method, fragment, change, count])

    def handle(self, method, path, headers, body, query):
        status, out_headers, payload, dropped = self._handle(method, path, headers, body, query)
        for rule in self._rules:
            if status == 200 and rule[3] > 0 and rule[0] == method and rule[1] in path:
                rule[3] -= 1
                payload = json.dumps(rule[2](json.loads(payload))).encode()
                break
        return status, out_headers, payload, dropped


class MalformedAnswerTests(StripeTestCase):
    """Answers that are not what Stripe documents end the payment by the safety rule, with a log line, never a
    traceback: ``failed`` while nothing was sent to the reader, ``unknown`` once it may have been."""

    def setUp(self):
        d = super().setUp()
        self.reshaper = Reshaper(self.fake)
        self.logged = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)
        return d

    def tracebacks(self):
        return [e.get("log_format") for e in self.logged if e.get("log_failure") is not None]

    @inlineCallbacks
    def test_a_payment_intent_created_without_an_id_fails_and_nothing_is_sent(self):
        self.reshaper.reshape("POST", "/v1/payment_intents", lambda pi: {**pi, "id": 17})
        send = SendRecorder(self.fake)
        outcome = yield self.make_driver().pay(self.request(), send)
        self.assertEqual((outcome.state, outcome.code), ("failed", "stripe_bad_answer"))
        self.assertIn("Nothing was charged", outcome.message)
        self.assertEqual((send.calls, self.paths("process_payment_intent")), ([], []))
        self.assertEqual(self.tracebacks(), [])
        self.assertTrue(any("has no id" in (e.get("log_format") or "") for e in self.logged))

    @inlineCallbacks
    def test_a_hand_over_answered_with_no_object_and_no_void_possible_is_unknown(self):
        self.reshaper.reshape("POST", "process_payment_intent", lambda answer: [answer])
        self.reshaper.reshape("POST", "/cancel", lambda answer: "canceled")
        send = SendRecorder(self.fake)
        outcome = yield self.make_driver().pay(self.request(), send)
        self.assertEqual((outcome.state, outcome.code), ("unknown", "stripe_bad_answer"))
        self.assertEqual(len(send.calls), 1)
        self.assertEqual(self.tracebacks(), [])
        self.assertTrue(any("not an object" in (e.get("log_format") or "") for e in self.logged))

    @inlineCallbacks
    def test_a_hand_over_answered_with_no_object_then_voided_fails_and_nothing_is_charged(self):
        self.reshaper.reshape("POST", "process_payment_intent", lambda answer: 1.5)
        outcome = yield self.make_driver().pay(self.request(), SendRecorder(self.fake))
        self.assertEqual((outcome.state, outcome.code), ("failed", "stripe_bad_answer"))
        self.assertEqual(self.intent(outcome.details["payment_intent"])["status"], "canceled")
        self.assertEqual(self.tracebacks(), [])

    @inlineCallbacks
    def test_reader_reads_of_the_wrong_shape_are_read_as_nothing_new(self):
        self.auto_present(delay=0.2)
        self.reshaper.reshape("GET", "/v1/terminal/readers/", lambda reader: {
            **reader, "status": {"online": 1}, "label": ["x"], "last_seen_at": "soon"})
        driver = self.make_driver(by_serial=False)
        outcome = yield driver.pay(self.request(), SendRecorder(self.fake))
        self.assertEqual((outcome.state, outcome.code), ("approved", "approved"))
        status = driver.status().as_dict()
        self.assertEqual((status["online"], status["label"], status["last_seen"]), (None, None, None))
        self.assertEqual(self.tracebacks(), [])

    @inlineCallbacks
    def test_a_failed_action_with_reasons_of_the_wrong_shape_is_a_decline_and_the_intent_voided(self):
        def failed(reader):
            action = dict(reader.get("action") or {}, status="failed", failure_code=7, failure_message={})
            return {**reader, "action": action}

        self.reshaper.reshape("GET", "/v1/terminal/readers/", failed)
        self.reshaper.reshape("GET", "/v1/payment_intents/", lambda pi: {**pi, "last_payment_error": "EUR"})
        outcome = yield self.make_driver(by_serial=False).pay(self.request(), SendRecorder(self.fake))
        self.assertEqual((outcome.state, outcome.code, outcome.message),
                         ("declined", "card_declined", "The card was declined: The card was declined."))
        self.assertEqual(self.intent(outcome.details["payment_intent"])["status"], "canceled")
        self.assertEqual(self.tracebacks(), [])
