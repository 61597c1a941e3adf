"""bench/journal_growth.py's generator and measurements on a small journal (the figures are not checked: a test
machine's timings mean nothing; what is checked is that the journal it builds is one the bridge reads as its own,
and that the measurement prunes a day in batches)."""

import os
import sys

from twisted.trial.unittest import SynchronousTestCase

from bridge.core.journal import Journal

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import journal_growth  # noqa: E402


class GeneratorTests(SynchronousTestCase):
    def test_the_generated_journal_is_the_bridges_own_kind(self):
        path = os.path.join(self.mktemp(), "j.sqlite3")
        os.makedirs(os.path.dirname(path))
        made = journal_growth.generate(path, 900, days=90, now=90 * 86400.0)
        self.assertEqual((made["payments"], made["last_seq"]), (900, 2700))
        journal = Journal.open(path, threaded=False)  # the integrity check included
        self.addCleanup(journal.close)
        newest = journal.list(limit=3)
        self.assertEqual([r.state for r in newest], ["approved"] * 3)
        self.assertGreater(newest[0].created, newest[1].created)
        self.assertEqual([t["state"] for t in journal.transitions(newest[0].id)],
                         ["accepted", "in_progress", "approved"])
        self.assertEqual(journal.acked(journal_growth.AWAY_CLIENT), made["away_seq"])
        self.assertEqual(len(journal.events_after(journal_growth.ARCHIVE_CLIENTS[1], 0, limit=10000)), 270)
        self.assertFalse(any(r.client_id.startswith("cl_bench_") for r in journal.list(limit=1000)))
        # random ids, as the bridge made them before its ids sorted by time: not in the order of creation
        ids = [r.id for r in reversed(journal.list(limit=1000))]
        self.assertNotEqual(ids, sorted(ids))
        self.assertEqual(len(set(ids)), 900)

    def test_the_measurement_prunes_the_oldest_day_in_batches(self):
        path = os.path.join(self.mktemp(), "j.sqlite3")
        os.makedirs(os.path.dirname(path))
        made = journal_growth.generate(path, 9000, days=90)
        r = journal_growth.measure(path, made["away_seq"])
        self.assertEqual(r["pruned"], 100)  # one day of 100 a day, nothing else
        self.assertEqual(r["prune_batches"], 2)  # 100, then one that finds none left
        self.assertEqual(r["replay_page_events"], 1001)
        self.assertEqual(r["check"], "ok")
        self.assertIn("pruning one day (100 payments, 2 batches", journal_growth.report(9000, r))
        # the turns are judged less the time the kernel left the thread waiting for a CPU, never more
        self.assertLessEqual(r["prune_held_max"], r["prune_turn_max"])
        self.assertGreaterEqual(r["check_wait"], 0.0)
        self.assertIn("longest reactor turn held by the process", journal_growth.report(9000, r))


class PrefillTests(SynchronousTestCase):
    def test_a_journal_built_once_is_copied_for_each_run_and_on_disk_before_the_bridge_starts(self):
        """The bridge's first start measured the kernel's writeback of a journal copied a moment before (1.3 s at
        2M payments): each copy is fsync'd before the bridge is started on it."""
        cache = self.mktemp()
        os.makedirs(cache)
        self.patch(os, "environ", dict(os.environ, TB_BENCH_JOURNAL_CACHE=cache))
        synced = []
        real_fsync = os.fsync
        self.patch(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real_fsync(fd))
        self.patch(journal_growth, "generate", lambda path, payments: (open(path, "wb").close(), {"payments": 3})[1])
        first, second = self.mktemp(), self.mktemp()
        self.assertEqual(journal_growth.prefill(first, 3), {"payments": 3})  # built, then kept in the cache
        self.assertEqual(journal_growth.prefill(second, 3), {"payments": 3})  # copied from the cache
        built = os.path.join(cache, "journal-3.sqlite3")
        self.assertEqual(synced, [os.path.realpath(built),
                                  os.path.realpath(os.path.join(second, "journal.sqlite3"))])
