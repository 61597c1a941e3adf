"""Feedback delivery: online at once, deferred with backoff until HTTP 200, in order, across restarts."""

import os
from urllib.parse import parse_qsl

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from bridge.core.journal import Journal
from bridge.core.payments import PaymentService
from bridge.core.registry import TerminalRegistry
from bridge.errors import BridgeError
from bridge.uplink.feedback import FEEDBACK_KEYS, FeedbackPoster, sha_verify, waiting
from tests.support import APPROVED, DECLINED, RecordingDriver

SECRET = "feedback-secret-0123456789"
PAYMENT = {"terminal": "till-1", "amount": 1234, "currency": "EUR"}


class Receiver:
    """The feedback route: answers with the codes it is told, records what it accepted."""

    def __init__(self):
        self.codes = []  # next answers; empty: 200
        self.accepted = []
        self.attempts = 0
        self.hold = None

    def post(self, url, body):
        self.attempts += 1
        params = dict(parse_qsl(body.decode()))
        assert sha_verify(params, SECRET, "sha512", FEEDBACK_KEYS)
        if self.hold is not None:
            return self.hold
        code = self.codes.pop(0) if self.codes else 200
        if code is None:
            return fail(BridgeError("uplink_unreachable", "no answer in time"))
        if code == 200:
            self.accepted.append(params)
        return succeed(code)


class PosterTests(SynchronousTestCase):
    def setUp(self):
        self.path = os.path.join(self.mktemp(), "journal.sqlite3")
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.receiver = Receiver()
        self.errors = []
        self.open()

    def open(self):
        self.journal = Journal.open(self.path, threaded=False, now=self.clock.seconds)
        self.driver = RecordingDriver("till-1")
        self.payments = PaymentService(self.journal, TerminalRegistry([self.driver]), self.clock)
        self.poster = FeedbackPoster("odoo", self.journal, "cl_odoo", "uplink:odoo", "https://odoo/fb", SECRET,
                                     "sha512", "shop", self.receiver.post, self.clock, on_result=self.errors.append,
                                     retry_initial=2.0, retry_max=300.0, rand=lambda: 0.5)
        self.payments.subscribe(self.poster.on_event)
        self.poster.start()

    def restart(self):
        self.successResultOf(self.poster.stop())
        self.journal.close()
        self.open()

    def pay(self, outcome=APPROVED, client="cl_odoo", command_id=None):
        self.count = getattr(self, "count", 0) + 1
        command_id = command_id or f"c-{self.count}"
        view = self.successResultOf(self.payments.start(client, command_id, PAYMENT))
        self.driver.finish(outcome)
        return view["id"]

    def test_a_final_state_goes_out_at_once_and_intermediate_ones_never(self):
        payment_id = self.pay()
        self.assertEqual([(p["PAYID"], p["STATUS"]) for p in self.receiver.accepted], [(payment_id, "9")])
        self.assertEqual(self.receiver.attempts, 1)
        self.assertEqual(waiting(self.journal, "cl_odoo", "uplink:odoo"), 0)
        self.assertEqual(self.journal.acked("uplink:odoo"), self.journal.last_seq())

    def test_the_cursor_is_written_once_per_result_not_once_per_event(self):
        writes = []
        ack = self.journal.ack
        self.journal.ack = lambda cursor, seq: (writes.append(seq), ack(cursor, seq))[1]
        self.receiver.codes = [500]
        self.pay()
        # accepted and in_progress are stepped over; the failed post leaves the cursor just before the result.
        self.assertEqual(writes, [self.journal.last_seq() - 1])
        self.clock.advance(10)
        self.assertEqual(writes, [self.journal.last_seq() - 1, self.journal.last_seq()])
        self.assertEqual(len(self.receiver.accepted), 1)

    def test_other_clients_payments_are_not_this_uplinks(self):
        self.pay(client="cl_pos")
        self.assertEqual(self.receiver.attempts, 0)

    def test_failing_for_minutes_then_delivered_in_order_once(self):
        self.receiver.codes = [500, None, 503, 500, 500, 302, 500]
        first = self.pay(APPROVED)
        second = self.pay(DECLINED)
        self.assertEqual(self.receiver.accepted, [])
        self.assertEqual(waiting(self.journal, "cl_odoo", "uplink:odoo"), 2)
        self.assertIn("HTTP 500", self.errors[0])
        for _ in range(20):
            self.clock.advance(30)
        self.assertEqual([(p["PAYID"], p["STATUS"]) for p in self.receiver.accepted],
                         [(first, "9"), (second, "2")])
        self.assertEqual(waiting(self.journal, "cl_odoo", "uplink:odoo"), 0)
        self.assertIsNone(self.errors[-1])
        self.clock.advance(3600)
        self.assertEqual(len(self.receiver.accepted), 2)

    def test_retries_back_off(self):
        self.receiver.codes = [500] * 100
        self.pay()
        times = []
        for second in range(1, 700):
            before = self.receiver.attempts
            self.clock.advance(1)
            if self.receiver.attempts != before:
                times.append(second)
        gaps = [b - a for a, b in zip([0] + times, times)]
        self.assertEqual(gaps[:4], [2, 4, 8, 16])
        self.assertTrue(all(g <= 300 for g in gaps))

    def test_a_new_final_state_brings_a_waiting_retry_forward(self):
        self.receiver.codes = [500]
        first = self.pay()
        self.assertEqual(self.receiver.accepted, [])
        second = self.pay()  # online first: the backlog goes now, oldest first
        self.assertEqual([p["PAYID"] for p in self.receiver.accepted], [first, second])

    def test_undelivered_feedback_survives_a_restart(self):
        self.receiver.codes = [500]
        first = self.pay()
        self.assertEqual(self.receiver.accepted, [])
        self.restart()
        self.assertEqual([p["PAYID"] for p in self.receiver.accepted], [first])
        second = self.pay()
        self.assertEqual([p["PAYID"] for p in self.receiver.accepted], [first, second])

    def test_delivered_feedback_is_not_sent_again_after_a_restart(self):
        self.pay()
        self.restart()
        self.clock.advance(600)
        self.assertEqual(self.receiver.attempts, 1)

    def test_stop_cancels_a_post_in_flight_and_the_next_start_sends_it(self):
        self.receiver.hold = Deferred()
        self.pay()
        self.successResultOf(self.poster.stop())
        self.receiver.hold = None
        self.journal.close()
        self.open()
        self.assertEqual(len(self.receiver.accepted), 1)

    def test_unknown_then_resolved_reports_both_in_order(self):
        from tests.support import LINK_LOST

        payment_id = self.pay(LINK_LOST)
        self.successResultOf(self.payments.resolve(payment_id, "approved", actor="cl_odoo",
                                                   note="receipt shows approved"))
        self.assertEqual([p["STATUS"] for p in self.receiver.accepted], ["92", "9"])
