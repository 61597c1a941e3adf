"""The safety rule every driver applies (bridge/core/safety.py): failed before the request left, unknown after."""

from __future__ import annotations

from twisted.logger import Logger, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from bridge.core import safety
from bridge.errors import BridgeError


class SafetyRuleTests(SynchronousTestCase):
    def setUp(self):
        self.logged = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)
        self.log = Logger()

    def tracebacks(self):
        return [e for e in self.logged if e.get("log_failure") is not None]

    def test_a_refused_before_send_keeps_its_code_and_words_and_logs_no_traceback(self):
        outcome = safety.not_sent(BridgeError("cancelled_before_send", "Cancelled."), self.log, "p1", "till-1")
        self.assertEqual((outcome.state, outcome.code, outcome.message), ("failed", "cancelled_before_send",
                                                                          "Cancelled."))
        self.assertEqual(self.tracebacks(), [])

    def test_a_broken_before_send_is_journal_unavailable_with_a_traceback(self):
        outcome = safety.not_sent(Failure(OSError("disk full")), self.log, "p1", "till-1", device="the reader")
        self.assertEqual((outcome.state, outcome.code), ("failed", "journal_unavailable"))
        self.assertIn("nothing was sent to the reader", outcome.message)
        self.assertEqual(len(self.tracebacks()), 1)
        self.flushLoggedErrors(OSError)

    def test_a_crash_before_the_request_left_is_failed_and_after_it_unknown(self):
        before = safety.crashed(Failure(KeyError("x")), self.log, "p1", "till-1", False, "Check the receipt.")
        after = safety.crashed(Failure(KeyError("x")), self.log, "p1", "till-1", True, "Check the receipt.",
                               payment_intent="pi_1")
        self.assertEqual((before.state, before.code), ("failed", "internal_error"))
        self.assertIn("Nothing was charged.", before.message)
        self.assertEqual((after.state, after.code, dict(after.details)), ("unknown", "internal_error",
                                                                          {"payment_intent": "pi_1"}))
        self.assertIn("Check the receipt.", after.message)
        self.assertEqual(len(self.tracebacks()), 2)
        self.flushLoggedErrors(KeyError)
