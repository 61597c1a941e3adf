import os
import sqlite3

from twisted.internet import reactor
from twisted.internet.defer import fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from bridge.core import journal as journal_module, states
from bridge.core.journal import ACK_WRITE_DELAY, SCHEMA_VERSION, Journal, PaymentRecord
from bridge.core.states import IllegalTransition
from bridge.errors import BridgeError


def record(n: int = 1, **kw) -> PaymentRecord:
    values = dict(id=f"pay_{n}", command_id=f"cmd_{n}", client_id="cl_a", terminal="till-1", kind="debit",
                  method="card", amount=1234, currency="EUR", args_digest="d", state=states.ACCEPTED,
                  created=1000.0 + n, updated=1000.0 + n)
    values.update(kw)
    return PaymentRecord(**values)


class InlineJournalTests(SynchronousTestCase):
    def setUp(self):
        self.path = os.path.join(self.mktemp(), "journal.sqlite3")
        self.journal = Journal.open(self.path, threaded=False)
        self.addCleanup(self.journal.close)

    def test_create_then_read_back(self):
        event = self.successResultOf(self.journal.create(record(), {"event": "payment.state"}, actor="cl_a"))
        self.assertEqual((event.seq, event.client_id, event.payment_id), (1, "cl_a", "pay_1"))
        self.assertEqual(self.journal.get("pay_1"), record())
        self.assertEqual(self.journal.get_by_command("cl_a", "cmd_1").id, "pay_1")
        self.assertIsNone(self.journal.get("pay_2"))

    def test_every_transition_is_kept_with_its_actor(self):
        r = record()
        self.successResultOf(self.journal.create(r, {}, actor="cl_a"))
        r = r.moved_to(states.IN_PROGRESS, None, None, None, 1002.0)
        self.successResultOf(self.journal.transition(r, {}, actor="bridge"))
        r = r.moved_to(states.APPROVED, "approved", "ok", {"authorisation": "1"}, 1003.0)
        self.successResultOf(self.journal.transition(r, {}, actor="terminal"))
        self.assertEqual([(t["state"], t["actor"]) for t in self.journal.transitions("pay_1")],
                         [("accepted", "cl_a"), ("in_progress", "bridge"), ("approved", "terminal")])
        self.assertEqual(self.journal.get("pay_1").details, {"authorisation": "1"})

    def test_a_duplicate_command_id_is_refused_and_changes_nothing(self):
        self.successResultOf(self.journal.create(record(1), {}, actor="x"))
        failure = self.failureResultOf(self.journal.create(record(2, command_id="cmd_1"), {}, actor="x"),
                                       BridgeError)
        self.assertEqual(failure.value.code, "duplicate_command")
        self.assertIsNone(self.journal.get("pay_2"))
        self.assertEqual(self.journal.last_seq(), 1)

    def test_a_payment_and_its_next_state_in_one_write(self):
        r = record()
        moved = r.moved_to(states.IN_PROGRESS, None, None, {"link": "tcp"}, 1002.0)
        first, second = self.successResultOf(self.journal.create_and_move(r, {"n": 1}, "cl_a", moved, {"n": 2},
                                                                          "bridge"))
        self.assertEqual([(e.seq, e.body) for e in (first, second)], [(1, {"n": 1}), (2, {"n": 2})])
        self.assertEqual(self.journal.get("pay_1"), moved)
        self.assertEqual([(t["state"], t["actor"], t["at"]) for t in self.journal.transitions("pay_1")],
                         [("accepted", "cl_a", 1001.0), ("in_progress", "bridge", 1002.0)])
        self.assertEqual([e.body for e in self.journal.events_after("cl_a", 0)], [{"n": 1}, {"n": 2}])
        self.assertEqual(self.journal.last_seq(), 2)

    def test_a_payment_and_its_next_state_are_refused_together(self):
        self.successResultOf(self.journal.create(record(1), {}, actor="x"))
        r = record(2, command_id="cmd_1")
        moved = r.moved_to(states.IN_PROGRESS, None, None, None, 1003.0)
        failure = self.failureResultOf(self.journal.create_and_move(r, {}, "x", moved, {}, "bridge"), BridgeError)
        self.assertEqual(failure.value.code, "duplicate_command")
        self.assertIsNone(self.journal.get("pay_2"))
        self.assertEqual((self.journal.transitions("pay_2"), self.journal.last_seq()), ([], 1))
        self.assertRaises(ValueError, self.journal.create_and_move, record(3), {}, "x",
                          record(4).moved_to(states.IN_PROGRESS, None, None, None, 1005.0), {}, "bridge")

    def test_illegal_transitions_are_programming_errors(self):
        self.assertRaises(IllegalTransition, record().moved_to, states.APPROVED, "x", "y", None, 1.0)
        done = record(state=states.APPROVED)
        self.assertRaises(IllegalTransition, done.moved_to, states.UNKNOWN, "x", "y", None, 1.0)

    def test_events_after_a_sequence_are_per_client_and_in_order(self):
        self.successResultOf(self.journal.create(record(1), {"n": 1}, actor="x"))
        self.successResultOf(self.journal.create(record(2, client_id="cl_b"), {"n": 2}, actor="x"))
        self.successResultOf(self.journal.create(record(3), {"n": 3}, actor="x"))
        self.assertEqual([e.body["n"] for e in self.journal.events_after("cl_a", 0)], [1, 3])
        self.assertEqual([e.seq for e in self.journal.events_after("cl_a", 1)], [3])

    def test_acks_only_move_forward(self):
        self.successResultOf(self.journal.ack("cl_a", 5))
        self.successResultOf(self.journal.ack("cl_a", 3))
        self.assertEqual(self.journal.acked("cl_a"), 5)
        self.assertEqual(self.journal.acked("cl_b"), 0)

    def test_in_flight_lists_accepted_and_in_progress_only(self):
        self.successResultOf(self.journal.create(record(1), {}, actor="x"))
        self.successResultOf(self.journal.create(record(2, state=states.IN_PROGRESS), {}, actor="x"))
        self.successResultOf(self.journal.create(record(3, state=states.FAILED), {}, actor="x"))
        self.assertEqual([r.id for r in self.journal.in_flight()], ["pay_1", "pay_2"])

    def test_list_filters_and_pages_newest_first(self):
        for n in range(1, 6):
            self.successResultOf(self.journal.create(record(n, terminal="t1" if n % 2 else "t2"), {}, actor="x"))
        self.assertEqual([r.id for r in self.journal.list(terminal="t1")], ["pay_5", "pay_3", "pay_1"])
        first = self.journal.list(limit=2)
        second = self.journal.list(limit=2, before=(first[-1].created, first[-1].id))
        self.assertEqual([r.id for r in first + second], ["pay_5", "pay_4", "pay_3", "pay_2"])

    def test_schema_version_is_recorded_and_reopening_keeps_data(self):
        self.successResultOf(self.journal.create(record(), {}, actor="x"))
        self.journal.close()
        again = Journal.open(self.path, threaded=False)
        self.addCleanup(again.close)
        self.assertEqual(again.get("pay_1").amount, 1234)
        version = sqlite3.connect(self.path).execute("SELECT value FROM meta WHERE key='schema_version'")
        self.assertEqual(version.fetchone()[0], str(SCHEMA_VERSION))

    def test_opening_a_current_journal_writes_nothing(self):
        """Every start opened the journal with a write (the schema version, unchanged): a commit, then a checkpoint
        into the journal file whose fsync waited for every page of that file not yet written back (1.3 s for a
        journal of 2M payments copied into place just before, docs/performance.md).  A current journal is only
        read; one that lacks an index still gets it."""
        from bridge.core.journal import _migrate

        self.successResultOf(self.journal.create(record(), {}, actor="x"))
        self.journal.close()
        os.utime(self.path, ns=(1_000_000_000, 1_000_000_000))
        _migrate(self.path, check=False)
        self.assertEqual(os.stat(self.path).st_mtime_ns, 1_000_000_000)  # not written
        conn = sqlite3.connect(self.path)
        conn.execute("DROP INDEX payments_created")
        conn.commit()
        conn.close()
        _migrate(self.path, check=False)
        indexes = sqlite3.connect(self.path).execute("SELECT name FROM sqlite_master WHERE type='index'").fetchall()
        self.assertIn(("payments_created",), indexes)

    def test_refunded_amount_counts_what_refunds_took_or_may_have_taken(self):
        self.successResultOf(self.journal.create(record(1, state=states.APPROVED), {}, actor="x"))
        refunds = [(2, states.APPROVED, 100), (3, states.UNKNOWN, 20), (4, states.DECLINED, 1000),
                   (5, states.FAILED, 1000), (6, states.IN_PROGRESS, 3)]
        for n, state, amount in refunds:
            self.successResultOf(self.journal.create(
                record(n, kind="refund", state=state, amount=amount, details={"refund_of": "pay_1"}), {}, actor="x"))
        # a debit whose details happen to name pay_1 is not a refund of it
        self.successResultOf(self.journal.create(record(7, state=states.APPROVED, details={"refund_of": "pay_1"}),
                                                 {}, actor="x"))
        self.assertEqual(self.journal.refunded_amount("pay_1"), 123)
        self.assertEqual(self.journal.refunded_amount("pay_2"), 0)

    def test_refunded_amount_is_an_index_lookup_also_in_a_journal_made_before_the_index(self):
        """A refund's check ran on the reactor thread as a scan of every payment kept (16 ms for 200 000 of
        them on the reference machine); the index makes it a lookup, and an older journal gets it when opened."""
        self.journal.close()
        conn = sqlite3.connect(self.path)
        conn.execute("DROP INDEX payments_refund_of")
        conn.commit()
        conn.close()
        journal = Journal.open(self.path, threaded=False)
        self.addCleanup(journal.close)
        plan = journal._read().execute(
            "EXPLAIN QUERY PLAN SELECT coalesce(sum(amount), 0) FROM payments WHERE kind='refund' "
            "AND json_extract(details, '$.refund_of')=? AND state NOT IN ('declined','cancelled','failed')",
            ("pay_1",)).fetchall()
        self.assertIn("USING INDEX payments_refund_of", " ".join(str(row[-1]) for row in plan))

    def test_command_ids_are_unique_per_client_only(self):
        self.successResultOf(self.journal.create(record(1, client_id="cl_a"), {}, actor="cl_a"))
        self.successResultOf(self.journal.create(record(2, command_id="cmd_1", client_id="cl_b"), {}, actor="cl_b"))
        self.assertEqual((self.journal.get_by_command("cl_a", "cmd_1").id,
                          self.journal.get_by_command("cl_b", "cmd_1").id), ("pay_1", "pay_2"))
        self.assertIsNone(self.journal.get_by_command("cl_c", "cmd_1"))

    def test_a_journal_made_by_the_first_schema_is_migrated_and_keeps_everything(self):
        """Schema 1 (until issue 13) made command ids unique over all clients; opening such a journal rebuilds
        the payments table with ids unique per client, keeping every row, transition, event and ack."""
        self.journal.close()
        path = os.path.join(self.mktemp(), "old.sqlite3")
        os.makedirs(os.path.dirname(path))
        conn = sqlite3.connect(path)
        conn.executescript(SCHEMA_1)
        conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
        conn.execute("INSERT INTO payments VALUES ('pay_old', 'cmd_1', 'cl_a', 'till-1', 'debit', 'card', 1234, "
                     "'EUR', 'digest', 'approved', 'approved', 'ok', '{\"authorisation\": \"9\"}', 1000.0, 1002.0)")
        conn.execute("INSERT INTO payments VALUES ('pay_ref', 'cmd_2', 'cl_a', 'till-1', 'refund', 'card', 34, "
                     "'EUR', 'd2', 'approved', NULL, NULL, '{\"refund_of\": \"pay_old\"}', 1003.0, 1004.0)")
        conn.execute("INSERT INTO transitions (payment_id, state, actor, at) VALUES ('pay_old', 'accepted', 'cl_a', 1000)")
        conn.execute("INSERT INTO events (client_id, payment_id, body, created) VALUES ('cl_a', 'pay_old', '{}', 1000)")
        conn.execute("INSERT INTO acks VALUES ('cl_a', 1)")
        conn.commit()
        conn.close()
        journal = Journal.open(path, threaded=False)
        self.addCleanup(journal.close)
        old = journal.get_by_command("cl_a", "cmd_1")
        self.assertEqual((old.id, old.amount, old.state, old.details), ("pay_old", 1234, "approved",
                                                                        {"authorisation": "9"}))
        self.assertEqual((len(journal.transitions("pay_old")), journal.last_seq(), journal.acked("cl_a")), (1, 1, 1))
        self.assertEqual(journal.refunded_amount("pay_old"), 34)
        # another client may now use the same command id
        self.successResultOf(journal.create(record(3, command_id="cmd_1", client_id="cl_b"), {}, actor="cl_b"))
        self.assertEqual(journal.get_by_command("cl_b", "cmd_1").id, "pay_3")
        failure = self.failureResultOf(journal.create(record(4, command_id="cmd_1", client_id="cl_a"), {},
                                                      actor="cl_a"), BridgeError)
        self.assertEqual(failure.value.code, "duplicate_command")
        version = journal._read().execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
        self.assertEqual(int(version), SCHEMA_VERSION)
        indexes = {row[0] for row in journal._read().execute("SELECT name FROM sqlite_master WHERE type='index'")}
        self.assertTrue({"payments_state", "payments_terminal_created", "payments_created",
                         "payments_refund_of"} <= indexes)

    def test_the_journal_file_is_private(self):
        self.assertEqual(os.stat(self.path).st_mode & 0o077, 0)


class ClientAckTests(SynchronousTestCase):
    """events.ack is counted at once and written, with the others of the same second, in one commit."""

    def setUp(self):
        self.path = os.path.join(self.mktemp(), "journal.sqlite3")
        self.clock = Clock()
        self.journal = Journal.open(self.path, reactor=self.clock, threaded=False)
        self.writes = 0
        submit = self.journal._writer.submit

        def counting(op):
            self.writes += 1
            return submit(op)

        self.journal._writer.submit = counting

    def on_disk(self, client_id):
        conn = sqlite3.connect(self.path)
        try:
            row = conn.execute("SELECT seq FROM acks WHERE client_id=?", (client_id,)).fetchone()
        finally:
            conn.close()
        return row[0] if row else None

    def test_acks_of_one_second_are_one_write(self):
        for seq in (1, 2, 3):
            self.journal.ack_soon("cl_a", seq)
        self.journal.ack_soon("cl_b", 7)
        self.journal.ack_soon("cl_a", 2)  # late and out of order: never moves back
        self.assertEqual((self.journal.acked("cl_a"), self.journal.acked("cl_b")), (3, 7))
        self.assertEqual((self.writes, self.on_disk("cl_a")), (0, None))
        self.clock.advance(ACK_WRITE_DELAY)
        self.assertEqual((self.writes, self.on_disk("cl_a"), self.on_disk("cl_b")), (1, 3, 7))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.journal.ack_soon("cl_a", 3)  # nothing new: nothing to write
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_acks_waiting_ride_along_with_the_next_payment_write(self):
        self.journal.ack_soon("cl_a", 4)
        self.successResultOf(self.journal.create(record(1), {}, actor="cl_a"))
        self.assertEqual((self.writes, self.on_disk("cl_a")), (1, 4))
        self.journal.ack_soon("cl_a", 5)
        # A write that fails (the same command id twice) takes its acks back with it: they wait for the next.
        self.failureResultOf(self.journal.create(record(2, command_id="cmd_1"), {}, actor="cl_a"), BridgeError)
        self.assertEqual((self.on_disk("cl_a"), self.journal.acked("cl_a")), (4, 5))
        self.clock.advance(ACK_WRITE_DELAY)
        self.assertEqual(self.on_disk("cl_a"), 5)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_an_ack_never_moves_the_written_one_back(self):
        self.successResultOf(self.journal.ack("cl_a", 9))
        self.journal.ack_soon("cl_a", 4)
        self.assertEqual(self.journal.acked("cl_a"), 9)
        self.clock.advance(ACK_WRITE_DELAY)
        self.assertEqual(self.on_disk("cl_a"), 9)

    def test_close_writes_what_is_waiting(self):
        self.journal.ack_soon("cl_a", 5)
        self.journal.close()
        self.assertEqual(self.on_disk("cl_a"), 5)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        again = Journal.open(self.path, threaded=False)
        self.addCleanup(again.close)
        self.assertEqual(again.acked("cl_a"), 5)

    def test_a_failed_write_keeps_the_acks_for_the_next_try(self):
        self.addCleanup(self.journal.close)
        self.journal.ack_soon("cl_a", 5)
        real = self.journal._writer.submit
        self.journal._writer.submit = lambda op: fail(BridgeError("journal_unavailable", "The disk is full."))
        self.clock.advance(ACK_WRITE_DELAY)
        self.assertEqual((self.on_disk("cl_a"), self.journal.acked("cl_a")), (None, 5))
        self.assertEqual(len(self.flushLoggedErrors()), 0)
        self.journal.ack_soon("cl_a", 6)
        self.journal._writer.submit = real
        self.clock.advance(ACK_WRITE_DELAY)
        self.assertEqual(self.on_disk("cl_a"), 6)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_without_a_clock_each_ack_is_written_at_once(self):
        journal = Journal.open(os.path.join(self.mktemp(), "j.sqlite3"), threaded=False)
        self.addCleanup(journal.close)
        journal.ack_soon("cl_a", 2)
        row = sqlite3.connect(journal.path).execute("SELECT seq FROM acks").fetchone()
        self.assertEqual(row, (2,))


class JournalFaultTests(SynchronousTestCase):
    def test_a_newer_schema_is_refused(self):
        path = os.path.join(self.mktemp(), "j.sqlite3")
        Journal.open(path, threaded=False).close()
        conn = sqlite3.connect(path)
        conn.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
        conn.commit()
        conn.close()
        error = self.assertRaises(BridgeError, Journal.open, path, threaded=False)
        self.assertEqual(error.code, "journal_unavailable")

    def test_a_damaged_file_is_refused_with_a_clear_reason(self):
        path = os.path.join(self.mktemp(), "j.sqlite3")
        os.makedirs(os.path.dirname(path))
        with open(path, "wb") as f:
            f.write(b"this is not a database" * 100)
        error = self.assertRaises(BridgeError, Journal.open, path, threaded=False)
        self.assertEqual(error.code, "journal_unavailable")
        self.assertIn("damaged", error.message)

    def test_a_write_that_fails_is_refused_and_leaves_no_trace(self):
        path = os.path.join(self.mktemp(), "j.sqlite3")
        journal = Journal.open(path, threaded=False)
        self.addCleanup(journal.close)
        journal._writer._conn.execute("PRAGMA max_page_count=1")  # the disk is "full"
        failure = self.failureResultOf(journal.create(record(), {"pad": "x" * 20000}, actor="x"), BridgeError)
        self.assertEqual(failure.value.code, "journal_unavailable")
        self.assertIn("full", failure.value.message)
        self.assertIsNone(journal.get("pay_1"))

    def test_a_closed_journal_refuses_writes(self):
        journal = Journal.open(os.path.join(self.mktemp(), "j.sqlite3"), threaded=False)
        journal.close()
        self.assertEqual(self.failureResultOf(journal.create(record(), {}, actor="x")).value.code,
                         "journal_unavailable")


class RefusedSchedulingTests(TestCase):
    def test_a_refused_scheduling_change_is_said_and_the_journal_writes_as_before(self):
        """Under a system call filter without sched_setscheduler the writer keeps the usual scheduling."""
        def refuse(*args):
            raise PermissionError(1, "Operation not permitted")

        self.patch(journal_module.os, "sched_setscheduler", refuse)
        journal = Journal.open(os.path.join(self.mktemp(), "j.sqlite3"), reactor=reactor)
        self.addCleanup(journal.close)
        self.assertEqual(journal._writer.scheduling, "normal: [Errno 1] Operation not permitted")
        # the policy the writer thread was started with: its creator's, left as it was
        self.assertEqual(os.sched_getscheduler(journal._writer._thread.native_id), os.sched_getscheduler(0))
        d = journal.create(record(1), {"i": 1}, actor="x")
        return d.addCallback(lambda event: self.assertEqual(event.seq, 1))


class ThreadedJournalTests(TestCase):
    """The daemon's configuration: a writer thread, results delivered on the reactor thread."""

    def setUp(self):
        self.policy_before = os.sched_getscheduler(0)  # whatever the test run was started with
        self.journal = Journal.open(os.path.join(self.mktemp(), "j.sqlite3"), reactor=reactor)
        self.addCleanup(self.journal.close)

    async def _many(self, n):
        from twisted.internet.defer import gatherResults

        return await gatherResults([self.journal.create(record(i), {"i": i}, actor="x") for i in range(n)])

    def test_concurrent_writes_all_commit_in_order(self):
        from twisted.internet.defer import Deferred

        d = Deferred.fromCoroutine(self._many(200))

        def check(events):
            self.assertEqual(sorted(e.seq for e in events), list(range(1, 201)))
            self.assertEqual(len(self.journal.events_after("cl_a", 0)), 200)

        return d.addCallback(check)

    def test_the_writer_thread_waits_for_a_free_cpu_instead_of_preempting_the_reactor(self):
        """SCHED_BATCH (Linux): woken by a write, the writer runs when the reactor waits, not at once
        (journal._run_when_idle).  The reactor's thread keeps its own scheduling."""
        writer = self.journal._writer
        self.assertEqual(writer.scheduling, "batch")
        self.assertEqual(os.sched_getscheduler(writer._thread.native_id), os.SCHED_BATCH)
        self.assertEqual(os.sched_getscheduler(0), self.policy_before)

        d = self.journal.create(record(1), {"i": 1}, actor="x")
        return d.addCallback(lambda event: self.assertEqual(event.seq, 1))

    def test_closing_writes_the_acks_still_in_memory(self):
        # The daemon's stop (SIGTERM) closes the journal on the reactor thread while acks wait for their second.
        self.journal.ack_soon("cl_a", 41)
        self.assertTrue(self.journal._ack_call.active())
        self.journal.close()
        again = Journal.open(self.journal.path, threaded=False)
        self.addCleanup(again.close)
        self.assertEqual(again.acked("cl_a"), 41)

    def test_one_bad_write_does_not_spoil_its_batch(self):
        from twisted.internet.defer import DeferredList

        writes = [self.journal.create(record(1), {}, actor="x"),
                  self.journal.create(record(2, command_id="cmd_1"), {}, actor="x"),
                  self.journal.create(record(3), {}, actor="x")]

        def check(results):
            self.assertEqual([ok for ok, _ in results], [True, False, True])
            self.assertEqual(results[1][1].value.code, "duplicate_command")
            self.assertIsNotNone(self.journal.get("pay_3"))

        return DeferredList(writes, consumeErrors=True).addCallback(check)


class PruneTests(SynchronousTestCase):
    def setUp(self):
        self.journal = Journal.open(os.path.join(self.mktemp(), "j.sqlite3"), threaded=False)
        self.addCleanup(self.journal.close)

    def settle(self, n, state):
        r = record(n)
        self.successResultOf(self.journal.create(r, {}, actor="x"))
        r = r.moved_to(states.IN_PROGRESS, None, None, None, r.updated)
        self.successResultOf(self.journal.transition(r, {}, actor="x"))
        self.successResultOf(self.journal.transition(r.moved_to(state, "c", "m", None, r.updated), {}, actor="x"))

    def test_old_final_payments_go_unknown_ones_stay(self):
        self.settle(1, states.APPROVED)
        self.settle(2, states.UNKNOWN)
        self.assertEqual(self.successResultOf(self.journal.prune(before=5000.0)), 1)
        self.assertIsNone(self.journal.get("pay_1"))
        self.assertEqual(self.journal.transitions("pay_1"), [])
        self.assertEqual([e.payment_id for e in self.journal.events_after("cl_a", 0)], ["pay_2"] * 3)

    def test_payments_an_uplink_has_not_delivered_are_kept(self):
        self.settle(1, states.APPROVED)
        self.settle(2, states.DECLINED)
        last_of_first = max(e.seq for e in self.journal.events_after("cl_a", 0) if e.payment_id == "pay_1")
        self.successResultOf(self.journal.ack("uplink:odoo", last_of_first))
        self.assertEqual(self.successResultOf(self.journal.prune(before=5000.0)), 1)
        self.assertIsNone(self.journal.get("pay_1"))
        self.assertIsNotNone(self.journal.get("pay_2"))


#: The schema the first bridge (journal schema 1) made, as it made it: command ids unique over all clients.
SCHEMA_1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE payments (
    id TEXT PRIMARY KEY, command_id TEXT NOT NULL UNIQUE, client_id TEXT NOT NULL, terminal TEXT NOT NULL,
    kind TEXT NOT NULL, method TEXT NOT NULL, amount INTEGER NOT NULL, currency TEXT NOT NULL,
    args_digest TEXT NOT NULL, state TEXT NOT NULL, reason_code TEXT, reason_message TEXT,
    details TEXT NOT NULL DEFAULT '{}', created REAL NOT NULL, updated REAL NOT NULL);
CREATE INDEX payments_state ON payments (state);
CREATE INDEX payments_terminal_created ON payments (terminal, created);
CREATE INDEX payments_created ON payments (created);
CREATE INDEX payments_refund_of ON payments (json_extract(details, '$.refund_of')) WHERE kind = 'refund';
CREATE TABLE transitions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, payment_id TEXT NOT NULL REFERENCES payments (id), state TEXT NOT NULL,
    reason_code TEXT, reason_message TEXT, details TEXT NOT NULL DEFAULT '{}', actor TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX transitions_payment ON transitions (payment_id);
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, client_id TEXT NOT NULL, payment_id TEXT NOT NULL, body TEXT NOT NULL,
    created REAL NOT NULL);
CREATE INDEX events_client ON events (client_id, seq);
CREATE TABLE acks (client_id TEXT PRIMARY KEY, seq INTEGER NOT NULL);
"""
