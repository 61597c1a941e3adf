"""What keeps a big journal (90 days of a big shop: two million payments) as quick as an empty one: pruning in
small batches on separate reactor turns, indexes for every query that would otherwise read all of it, and the
whole-file integrity check beside the bridge rather than before it is ready.  The figures are bench/'s
(docs/performance.md); these tests check the behaviour that gives them, without timing anything."""

import os
import sqlite3

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from bridge.core import journal as journal_module
from bridge.core import states
from bridge.core.journal import Journal
from bridge.errors import BridgeError

from tests.test_journal import record


def settle(journal: Journal, n: int, state: str = states.APPROVED, **kw) -> None:
    r = record(n, **kw)
    journal.create(r, {}, actor="x")
    r = r.moved_to(states.IN_PROGRESS, None, None, None, r.updated)
    journal.transition(r, {}, actor="x")
    journal.transition(r.moved_to(state, "c", "m", None, r.updated), {}, actor="x")


def plan(journal: Journal, sql: str, args: tuple) -> str:
    return " | ".join(str(row[-1]) for row in journal._read().execute("EXPLAIN QUERY PLAN " + sql, args))


class PruneBatchTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.journal = Journal.open(os.path.join(self.mktemp(), "j.sqlite3"), reactor=self.clock, threaded=False)
        self.addCleanup(self.journal.close)
        for n in range(1, 251):
            settle(self.journal, n)
        settle(self.journal, 251, states.UNKNOWN)
        self.writes = 0
        submit = self.journal._writer.submit

        def counted(op):
            self.writes += 1
            return submit(op)

        self.journal._writer.submit = counted

    def turn(self):
        """One later turn of the reactor: run the calls due now, but not those they schedule (Clock.advance
        would run those too, in the same turn)."""
        due = [call for call in self.clock.getDelayedCalls() if call.getTime() <= self.clock.seconds()]
        self.assertTrue(due, "nothing was scheduled for a later turn")
        for call in due:
            self.clock.calls.remove(call)
            call.func(*call.args, **call.kw)

    def test_pruning_goes_in_batches_each_a_write_of_its_own_on_a_later_reactor_turn(self):
        done = self.journal.prune(before=5000.0, batch=100)
        self.assertNoResult(done)  # one batch now; the reactor handles what else waits before the next
        self.assertEqual((self.writes, self.journal._read().execute("SELECT count(*) FROM payments").fetchone()[0]),
                         (1, 151))
        self.turn()
        self.assertNoResult(done)
        self.assertEqual(self.writes, 2)
        self.turn()
        self.assertEqual(self.successResultOf(done), 250)
        self.assertEqual(self.writes, 3)
        self.assertEqual([r.id for r in self.journal.list()], ["pay_251"])  # unknown: kept
        self.assertEqual({e.payment_id for e in self.journal.events_after("cl_a", 0)}, {"pay_251"})
        self.assertEqual(self.journal.transitions("pay_1"), [])

    def test_the_default_batch_is_small(self):
        done = self.journal.prune(before=5000.0)
        self.assertNoResult(done)
        self.assertEqual(self.writes, 1)
        self.turn()
        self.turn()
        self.assertEqual(self.successResultOf(done), 250)
        self.assertEqual(journal_module.PRUNE_BATCH, 100)

    def test_a_batch_that_fails_fails_the_pruning_and_the_rest_waits_for_the_next_time(self):
        done = self.journal.prune(before=5000.0, batch=100)
        self.journal._writer._conn.execute("PRAGMA query_only=ON")  # the next batch cannot write
        self.turn()
        self.assertEqual(self.failureResultOf(done, BridgeError).value.code, "journal_unavailable")
        self.assertEqual(self.journal._read().execute("SELECT count(*) FROM payments").fetchone()[0], 151)


class IndexTests(SynchronousTestCase):
    """Every query that runs while payments are taken finds its rows through an index, never by reading the
    whole table: at two million payments a scan is seconds."""

    def setUp(self):
        self.journal = Journal.open(os.path.join(self.mktemp(), "j.sqlite3"), threaded=False)
        self.addCleanup(self.journal.close)

    def test_pruning_finds_old_payments_and_their_events_through_indexes(self):
        found = plan(self.journal, journal_module._PRUNE_SELECT, (5000.0, 100))
        self.assertIn("payments_created", found)
        self.assertIn("events_payment", found)
        self.assertNotIn("SCAN", found)
        deleting = plan(self.journal, "DELETE FROM events WHERE payment_id IN (?, ?)", ("a", "b"))
        self.assertIn("events_payment", deleting)

    def test_one_clients_first_page_is_read_in_order_from_an_index(self):
        found = plan(self.journal, "SELECT id FROM payments WHERE client_id = ? ORDER BY created DESC, id DESC "
                                   "LIMIT 51", ("cl_a",))
        self.assertIn("payments_client_created", found)
        self.assertNotIn("SCAN", found)


def damage_an_index(path: str) -> None:
    """Zero the root page of an index, leaving the schema and the tables readable."""
    conn = sqlite3.connect(path)
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name='payments_created'").fetchone()[0]
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    with open(path, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\xff" * page_size)


class BackgroundCheckTests(TestCase):
    """The integrity check reads the whole file (seconds at two million payments, minutes on an SD card): the
    daemon's journal (a writer thread) opens without it, runs it on a thread, and refuses writes if it fails."""

    def make(self, damaged: bool) -> str:
        path = os.path.join(self.mktemp(), "j.sqlite3")
        journal = Journal.open(path, threaded=False)
        for n in range(1, 301):
            settle(journal, n)
        journal.close()
        if damaged:
            damage_an_index(path)
        return path

    def open_and_wait_for_the_check(self, path: str) -> Deferred:
        checked: Deferred = Deferred()
        original = Journal._checked
        opened: list[Journal] = []

        def spy(journal, result):
            original(journal, result)
            # Only this test's journal: another test's journal, closed since, may finish its check now.
            if opened and journal is opened[0]:
                checked.callback(journal)

        self.patch(Journal, "_checked", spy)
        journal = Journal.open(path, reactor=reactor)
        opened.append(journal)  # the check's result comes through the reactor, after open() has returned
        self.addCleanup(journal.close)
        return checked

    # Twisted 22.4's trial (Debian bookworm's) does not run a coroutine test method: each test returns a Deferred
    def test_a_damaged_journal_opens_then_refuses_writes_once_checked(self):
        return Deferred.fromCoroutine(self._damaged_journal())

    async def _damaged_journal(self):
        path = self.make(damaged=True)
        self.assertRaises(BridgeError, Journal.open, path, threaded=False)  # checked before opening
        journal = await self.open_and_wait_for_the_check(path)
        self.assertIsNotNone(journal.get("pay_1"))  # what can be read is still served
        try:
            await journal.create(record(999), {}, actor="x")
        except BridgeError as e:
            self.assertEqual(e.code, "journal_unavailable")
            self.assertIn("damaged", e.message)
        else:
            self.fail("a damaged journal took a write")
        self.flushLoggedErrors()

    def test_a_sound_journal_keeps_taking_writes_after_its_check(self):
        return Deferred.fromCoroutine(self._sound_journal())

    async def _sound_journal(self):
        journal = await self.open_and_wait_for_the_check(self.make(damaged=False))
        event = await journal.create(record(999), {}, actor="x")
        self.assertEqual(event.payment_id, "pay_999")
