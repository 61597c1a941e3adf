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
        self.limit = 10**6

    def post(self, url, body):
        self.attempts += 1
        assert self.attempts <= self.limit, "posting in a loop"
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
        directory = self.mktemp()
        self.path = os.path.join(directory, "journal.sqlite3")
        self.refused_path = os.path.join(directory, "uplink", "odoo.refused.json")
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.receiver = Receiver()
        self.errors = []
        self.open()

    def open(self):
        self.journal = Journal.open(self.path, threaded=False, now=self.clock.seconds)
        self.driver = RecordingDriver("till-1")
        self.payments = PaymentService(self.journal, TerminalRegistry([self.driver]), self.clock)
        self.poster = FeedbackPoster(name="odoo", journal=self.journal, client_id="cl_odoo", cursor_id="uplink:odoo",
                                     url="https://odoo/fb", passphrase=SECRET, hash_name="sha512", bridge_name="shop",
                                     post=self.receiver.post, clock=self.clock, on_result=self.errors.append,
                                     retry_initial=2.0, retry_max=300.0, rand=lambda: 0.5,
                                     refused_path=self.refused_path)
        self.payments.subscribe(self.poster.on_event)
        self.poster.start()

    def restart(self):
        self.successResultOf(self.poster.stop())
        self.journal.close()
        self.open()

    def waiting(self):
        return waiting(self.journal, "cl_odoo", "uplink:odoo", self.refused_path)

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
        self.assertEqual(self.waiting(), 0)
        self.assertEqual(self.journal.acked("uplink:odoo"), self.journal.last_seq())

    def test_the_cursor_is_written_once_per_result_not_once_per_event(self):
        writes = []
        ack = self.journal.ack
        self.journal.ack = lambda cursor, seq: (writes.append(seq), ack(cursor, seq))[1]
        self.pay()
        # accepted and in_progress are stepped over; the result's post moves the cursor once.
        self.assertEqual(writes, [self.journal.last_seq()])
        self.receiver.codes = [500]
        self.pay()
        # refused: its seq is kept in the refused file, and the cursor goes past it
        self.assertEqual(writes, [self.journal.last_seq() - 3, self.journal.last_seq()])
        self.assertEqual(self.poster.refused, [self.journal.last_seq()])
        self.clock.advance(10)
        self.assertEqual(len(writes), 2)
        self.assertEqual(len(self.receiver.accepted), 2)
        self.assertEqual(self.poster.refused, [])

    def test_other_clients_payments_are_not_this_uplinks(self):
        self.pay(client="cl_pos")
        self.assertEqual(self.receiver.attempts, 0)

    def test_failing_for_minutes_then_delivered_once(self):
        self.receiver.codes = [500, None, 503, 500, 500, 302, 500]
        first = self.pay(APPROVED)
        second = self.pay(DECLINED)
        self.assertEqual(self.receiver.accepted, [])
        self.assertEqual(self.waiting(), 2)
        self.assertIn("HTTP 500", self.errors[0])
        for _ in range(20):
            self.clock.advance(30)
        self.assertEqual(sorted((p["PAYID"], p["STATUS"]) for p in self.receiver.accepted),
                         sorted([(first, "9"), (second, "2")]))
        self.assertEqual(self.waiting(), 0)
        self.assertIsNone(self.errors[-1])
        self.clock.advance(3600)
        self.assertEqual(len(self.receiver.accepted), 2)

    def test_a_refused_result_does_not_hold_back_later_ones_and_is_retried_on_its_own(self):
        self.receiver.codes = [403]
        first = self.pay()
        second = self.pay()  # goes at once, though the first is still refused
        third = self.pay()
        self.assertEqual([p["PAYID"] for p in self.receiver.accepted], [second, third])
        self.assertEqual(self.receiver.attempts, 3)
        self.assertEqual(self.waiting(), 1)
        self.receiver.codes = [403]
        self.clock.advance(2)  # the first's own retry: refused again, next in 4 s
        self.assertEqual(self.receiver.attempts, 4)
        self.clock.advance(3.9)
        self.assertEqual(self.receiver.attempts, 4)
        self.clock.advance(0.1)
        self.assertEqual([p["PAYID"] for p in self.receiver.accepted], [second, third, first])
        self.assertEqual((self.waiting(), self.poster.refused), (0, []))
        self.assertIsNone(self.errors[-1])

    def test_no_answer_stops_the_round_and_later_results_wait_for_one_shared_retry(self):
        self.receiver.codes = [None]
        self.pay()
        self.assertEqual(self.receiver.attempts, 1)
        self.clock.advance(2)
        self.assertEqual(len(self.receiver.accepted), 1)

    def test_a_refused_result_meeting_no_answer_waits_for_the_shared_backoff(self):
        self.receiver.codes = [403] + [None] * 5
        self.pay()
        self.receiver.limit = 20  # a retry loop would go past this at once
        times = []
        for second in range(1, 120):
            before = self.receiver.attempts
            self.clock.advance(1)
            if self.receiver.attempts != before:
                times.append(second)
        self.assertEqual(len(self.receiver.accepted), 1)
        gaps = [b - a for a, b in zip(times, times[1:])]
        self.assertEqual(gaps[:4], [2, 4, 8, 16])

    def test_refused_results_survive_a_restart_and_the_cursor_never_skips_them(self):
        self.receiver.codes = [403]
        first = self.pay()
        second = self.pay()
        self.assertEqual([p["PAYID"] for p in self.receiver.accepted], [second])
        self.assertEqual(self.journal.acked("uplink:odoo"), self.journal.last_seq())  # past the refused one
        self.restart()  # the refused one is on disk: retried at the start
        self.assertEqual([p["PAYID"] for p in self.receiver.accepted], [second, first])
        self.assertEqual(self.waiting(), 0)
        self.restart()
        self.clock.advance(600)
        self.assertEqual(self.receiver.attempts, 3)

    def test_a_healthy_bus_or_fetch_cuts_every_wait_short(self):
        self.receiver.codes = [None, None, None, None, 403]
        first = self.pay()
        for delay in (2, 4, 8):
            self.clock.advance(delay)
        self.assertEqual(self.receiver.attempts, 4)  # the next try would be 16 s away
        self.poster.wake()  # the bus connected: Odoo is back; refused by Odoo this time
        self.assertEqual(self.receiver.attempts, 5)
        self.poster.wake()  # a fetch worked: the refused one too goes at once
        self.assertEqual([p["PAYID"] for p in self.receiver.accepted], [first])
        self.poster.wake()  # nothing waits: nothing is sent
        self.assertEqual(self.receiver.attempts, 6)

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

    def test_a_new_final_state_goes_at_once_while_the_receiver_seemed_down(self):
        self.receiver.codes = [None]
        first = self.pay()
        self.assertEqual(self.receiver.accepted, [])
        second = self.pay()  # online first: the backlog goes now, oldest first
        self.assertEqual([p["PAYID"] for p in self.receiver.accepted], [first, second])

    def test_undelivered_feedback_survives_a_restart(self):
        self.receiver.codes = [None]
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
