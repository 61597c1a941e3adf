"""The one backoff policy (bridge/core/backoff.py) and the Deferred helpers (bridge/core/deferreds.py)."""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase

from bridge.core.backoff import backoff
from bridge.core.deferreds import OnceMore, follow


class BackoffTests(SynchronousTestCase):
    def test_delays_grow_by_the_factor_up_to_the_maximum(self):
        policy = backoff(1.0, 60.0)
        self.assertEqual([policy(n) for n in range(8)], [1, 2, 4, 8, 16, 32, 60, 60])
        self.assertEqual(policy(10_000), 60)  # no overflow however long the outage

    def test_the_spread_is_a_factor_around_the_delay_and_clamp_keeps_the_bounds(self):
        self.assertEqual(backoff(2.0, 300.0, spread=0.2, rand=lambda: 0.0)(1), 4.0 * 0.8)
        self.assertAlmostEqual(backoff(2.0, 300.0, spread=0.2, rand=lambda: 1.0)(10), 300.0 * 1.2)
        clamped = backoff(1.0, 60.0, factor=1.5, spread=0.25, floor=1.0, clamp=True, rand=lambda: 0.0)
        self.assertEqual((clamped(0), clamped(20)), (1.0, 60.0 * 0.75))
        self.assertEqual(backoff(1.0, 60.0, spread=0.25, clamp=True, rand=lambda: 1.0)(20), 60.0)

    def test_a_zero_initial_delay_retries_at_once(self):
        self.assertEqual(backoff(0.0, 5.0)(3), 0.0)


class FollowTests(SynchronousTestCase):
    def test_followers_get_the_result_and_leave_the_chain_alone(self):
        d = Deferred()
        first, second = follow(d), follow(d)
        d.callback("reply")
        self.assertEqual((self.successResultOf(first), self.successResultOf(second)), ("reply", "reply"))
        self.assertEqual(self.successResultOf(d), "reply")

    def test_a_failure_reaches_the_follower_and_stays_in_the_chain(self):
        d = fail(ValueError("x"))
        follower = follow(d)
        self.failureResultOf(follower, ValueError)
        self.failureResultOf(d, ValueError)


class OnceMoreTests(SynchronousTestCase):
    def setUp(self):
        self.runs, self.ended = [], []
        self.once = OnceMore(self.start_run, lambda result, again: self.ended.append((result, again)))

    def start_run(self):
        d = Deferred()
        self.runs.append(d)
        return d

    def test_asks_during_a_run_make_one_more_run(self):
        self.once.ask()
        self.once.ask()
        self.once.ask()
        self.assertEqual(len(self.runs), 1)
        self.runs[0].callback("first")
        self.assertEqual(self.ended, [("first", True)])
        self.once.ask()  # what the owner does when told "again"
        self.runs[1].callback("second")
        self.assertEqual(self.ended[-1], ("second", False))
        self.assertEqual(len(self.runs), 2)

    def test_stop_cancels_the_run_and_fires_when_it_ended(self):
        self.assertEqual(self.successResultOf(self.once.stop()), None)
        self.once.ask()
        self.once.ask()
        stopped = self.once.stop()
        self.successResultOf(stopped)
        self.assertEqual(self.ended[0][1], False)
        self.assertIsNone(self.once.running)
        self.assertIsInstance(succeed(None), Deferred)
