"""The journal's commit hook the metrics use: told each commit's time, and harmless when the watcher fails."""

import os

from twisted.trial.unittest import SynchronousTestCase

from bridge.core.journal import Journal
from bridge.status.facts import CommitWatch
from tests.test_journal import record


class CommitWatchTests(SynchronousTestCase):
    def setUp(self):
        self.journal = Journal.open(os.path.join(self.mktemp(), "journal.sqlite3"), threaded=False)
        self.addCleanup(self.journal.close)

    def test_each_commit_is_timed_and_the_last_one_remembered(self):
        seen = []
        watch = CommitWatch(seen.append, now=lambda: 1234.5)
        self.journal.watch_commits(watch)
        self.successResultOf(self.journal.create(record(1), {}, actor="x"))
        self.successResultOf(self.journal.create(record(2), {}, actor="x"))
        self.assertEqual(len(seen), 2)
        self.assertTrue(all(0 <= s < 10 for s in seen))
        self.assertEqual(watch.last_at, 1234.5)
        self.assertEqual(watch.last_seconds, seen[-1])

    def test_a_failing_watcher_does_not_stop_the_journal(self):
        def broken(seconds):
            raise RuntimeError("boom")

        self.journal.watch_commits(broken)
        self.successResultOf(self.journal.create(record(1), {}, actor="x"))
        self.assertEqual(self.journal.get("pay_1").id, "pay_1")
