"""What a payment costs the bridge, without timing anything (the figures are bench/'s, docs/performance.md):
payment ids that sort by time (each payment's writes land on the indexes' last pages, however big the journal),
the last event seq kept in memory instead of read for every acknowledgement, each event serialised once (the
journal's canonical text is what the session signs and sends), pruning that waits for the integrity check, and
the journal's invariants under any mix of writes and pruning (hypothesis)."""

import json
import os
import re
import sqlite3

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from bridge.api import signing
from bridge.api.session import Bridge, Session
from bridge.core import states
from bridge.core.journal import Event, Journal, canonical_json
from bridge.core.payments import PaymentService, new_payment_id
from bridge.core.registry import TerminalRegistry
from bridge.errors import BridgeError
from tests.support import APPROVED, RecordingDriver, add_test_client, load_config, write_config
from tests.test_journal import record
from tests.test_journal_growth import settle


class PaymentIdTests(SynchronousTestCase):
    def test_an_id_is_pay_and_32_hex_digits(self):
        self.assertRegex(new_payment_id(), r"^pay_[0-9a-f]{32}$")

    @given(st.floats(min_value=1.6e9, max_value=8e9), st.integers(min_value=1, max_value=10 ** 9))
    def test_an_id_made_a_millisecond_later_or_more_sorts_after(self, earlier, later_ms):
        first = new_payment_id(lambda: earlier)
        second = new_payment_id(lambda: earlier + later_ms / 1000 + 0.001)
        self.assertLess(first, second)

    def test_ids_of_the_same_millisecond_differ(self):
        ids = {new_payment_id(lambda: 1_700_000_000.0) for _ in range(10_000)}
        self.assertEqual(len(ids), 10_000)

    def test_the_service_makes_time_ordered_ids(self):
        clock = Clock()
        journal = Journal.open(os.path.join(self.mktemp(), "j.sqlite3"), threaded=False)
        self.addCleanup(journal.close)
        driver = RecordingDriver("till-1")
        service = PaymentService(journal, TerminalRegistry([driver]), clock)
        made = []
        for n in range(8):
            view = self.successResultOf(service.start("cl_a", f"c{n}", {"terminal": "till-1", "amount": 100,
                                                                         "currency": "EUR"}))
            made.append(view["id"])
            driver.finish(APPROVED)
            self.successResultOf(service.wait_idle())
        # the ids are the service's own (not a test's counter) and sort in the order the payments were made
        self.assertTrue(all(re.fullmatch(r"pay_[0-9a-f]{32}", i) for i in made), made)
        self.assertEqual(sorted(made), made)


class LastSeqTests(SynchronousTestCase):
    def setUp(self):
        self.path = os.path.join(self.mktemp(), "j.sqlite3")
        self.journal = Journal.open(self.path, reactor=Clock(), threaded=False)
        self.addCleanup(self.journal.close)

    def in_file(self) -> int:
        row = sqlite3.connect(self.path).execute("SELECT seq FROM sqlite_sequence WHERE name='events'").fetchone()
        return row[0] if row else 0

    def test_last_seq_follows_the_writes_without_reading_the_file(self):
        self.assertEqual(self.journal.last_seq(), 0)
        for n in range(1, 4):
            settle(self.journal, n)
        reads = []
        self.journal._reader.set_trace_callback(reads.append)
        self.assertEqual(self.journal.last_seq(), 9)
        self.assertEqual(self.journal.last_seq(), self.in_file())
        self.assertEqual(reads, [])

    def test_last_seq_is_kept_when_pruning_deleted_the_newest_event(self):
        for n in range(1, 4):
            settle(self.journal, n)
        self.assertEqual(self.successResultOf(self.journal.prune(before=10_000.0)), 3)
        self.assertEqual(self.journal.last_seq(), 9)
        # and a journal opened afterwards says so too (an ack of seq 9 is not "after the last event")
        again = Journal.open(self.path, threaded=False)
        self.addCleanup(again.close)
        self.assertEqual(again.last_seq(), 9)

    def test_a_read_only_journal_beside_the_bridge_sees_new_events(self):
        reader = Journal.open_readonly(self.path)
        self.addCleanup(reader.close)
        settle(self.journal, 1)
        self.assertEqual(reader.last_seq(), 3)
        settle(self.journal, 2)
        self.assertEqual(reader.last_seq(), 6)


class EventTextTests(SynchronousTestCase):
    def setUp(self):
        self.path = os.path.join(self.mktemp(), "j.sqlite3")
        self.journal = Journal.open(self.path, threaded=False)
        self.addCleanup(self.journal.close)

    def test_the_journal_stores_each_event_as_canonical_json_and_hands_that_text_on(self):
        body = {"payment": {"id": "pay_1", "amount": 5, "details": {"é": "ü", "a": [1, 2]}}, "event": "x"}
        event = self.successResultOf(self.journal.create(record(), body, actor="cl_a"))
        stored = sqlite3.connect(self.path).execute("SELECT body FROM events WHERE seq=?", (event.seq,)).fetchone()
        self.assertEqual(event.text, stored[0])
        self.assertEqual(stored[0], '{"event":"x","payment":{"amount":5,"details":{"a":[1,2],"é":"ü"},"id":"pay_1"}}')
        self.assertEqual(self.journal.events_after("cl_a", 0)[0].body, body)

    def test_an_event_that_is_not_canonical_json_is_still_journaled(self):
        event = self.successResultOf(self.journal.create(record(), {"x": float("nan")}, actor="cl_a"))
        self.assertIsNone(event.text)  # the session serialises it (and refuses it) as before
        self.assertEqual(len(self.journal.events_after("cl_a", 0)), 1)
        self.assertEqual(self.successResultOf(self.journal.create(record(2), {}, actor="cl_a")).seq, 2)


class SentEventTests(SynchronousTestCase):
    """The session sends an event from the journal's text: the same bytes as serialising it again."""

    def setUp(self):
        directory = self.mktemp()
        os.makedirs(directory)
        path = write_config(directory, {"till-1": "127.0.0.1:9"})
        self.client = add_test_client(path, "pos")
        config = load_config(path)
        journal = Journal.open(os.path.join(directory, "j.sqlite3"), threaded=False)
        self.addCleanup(journal.close)
        clock = Clock()
        self.bridge = Bridge(config, PaymentService(journal, TerminalRegistry([]), clock), clock)
        self.sent: list[bytes] = []
        self.session = Session(self.bridge, lambda message: self.fail("sent as a dict"), peer="test",
                               send_bytes=self.sent.append)
        self.session.client = config.client_by_id(self.client["client_id"])

    def expected(self, body: dict, seq: int) -> bytes:
        return signing.signed_bytes(dict(body, seq=seq), self.client["secret_out"], self.client["algorithm"])

    @settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.dictionaries(st.sampled_from(["event", "payment", "at", "re", "sequence", "zz", "Seq", "sep"]),
                           st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                                        lambda inner: st.lists(inner, max_size=3)
                                        | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)),
           st.integers(min_value=1, max_value=2 ** 53))
    def test_same_bytes_as_serialising_again(self, body, seq):
        self.sent.clear()
        self.session._sent_seq = 0
        self.session.send_event(Event(seq, "cl", "pay_1", body, canonical_json(body)))
        self.assertEqual(self.sent, [self.expected(body, seq)])
        json.loads(self.sent[0])  # and it is JSON

    def test_without_the_text_the_body_is_serialised(self):
        body = {"event": "payment.state"}
        self.session.send_event(Event(7, "cl", "pay_1", body))
        self.assertEqual(self.sent, [self.expected(body, 7)])


class PruneWaitsForTheCheckTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.journal = Journal.open(os.path.join(self.mktemp(), "j.sqlite3"), reactor=self.clock, threaded=False)
        self.addCleanup(self.journal.close)
        for n in range(1, 151):
            settle(self.journal, n)

    def count(self) -> int:
        return self.journal._read().execute("SELECT count(*) FROM payments").fetchone()[0]

    def test_pruning_starts_once_the_integrity_check_has_ended(self):
        self.journal._check_done = Deferred()  # as _check_in_background sets it
        done = self.journal.prune(before=10_000.0, batch=100)
        self.clock.advance(0)
        self.assertEqual(self.count(), 150)  # nothing deleted while the check reads the file
        self.journal._checked("ok")
        self.assertEqual(self.count(), 50)  # the first batch, at once
        self.assertNoResult(done)
        self.clock.advance(0)
        self.assertEqual(self.successResultOf(done), 150)

    def test_a_payments_write_goes_between_two_batches(self):
        order = []
        original = self.journal._prune_batch
        self.journal._prune_batch = lambda before, limit: original(before, limit).addCallback(
            lambda n: order.append(("batch", n)) or n)
        done = self.journal.prune(before=10_000.0, batch=60)
        r = record(999, created=20_000.0, updated=20_000.0)
        self.journal.create(r, {}, actor="x").addCallback(lambda e: order.append(("payment", e.payment_id)))
        self.clock.advance(0)
        self.clock.advance(0)
        self.assertEqual(self.successResultOf(done), 150)
        self.assertEqual(order, [("batch", 60), ("payment", "pay_999"), ("batch", 60), ("batch", 30)])


#: ("step", n, state): payment n is created if new, else moves on (to in_progress, then to ``state``);
#: ("ack", seq); ("prune", before, batch).
operation = st.one_of(
    st.tuples(st.just("step"), st.integers(min_value=1, max_value=6),
              st.sampled_from([states.APPROVED, states.DECLINED, states.UNKNOWN, states.FAILED])),
    st.tuples(st.just("ack"), st.integers(min_value=0, max_value=60)),
    st.tuples(st.just("prune"), st.integers(min_value=1000, max_value=1020), st.integers(min_value=1, max_value=4)),
)


class JournalInvariantTests(SynchronousTestCase):
    """Whatever mix of payments, acknowledgements and pruning: every event seq is given once and never reused,
    last_seq is the highest ever given, no transition or event outlives its payment, unknown and running
    payments are never pruned, and what the journal hands back is what it was given."""

    @settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.lists(operation, max_size=50))
    def test_invariants(self, operations):
        clock = Clock()
        path = os.path.join(self.mktemp(), "j.sqlite3")
        journal = Journal.open(path, reactor=clock, threaded=False)
        try:
            records, seqs, bodies = {}, [], {}
            for op in operations:
                if op[0] == "step" and op[1] not in records:
                    r = record(op[1], created=1000.0 + op[1], updated=1000.0 + op[1])
                    body = {"event": "payment.state", "n": op[1], "state": r.state}
                    event = self.successResultOf(journal.create(r, body, actor="x"))
                    records[op[1]], bodies[event.seq] = r, body
                    seqs.append(event.seq)
                elif op[0] == "step" and not states.is_final(records[op[1]].state):
                    r = records[op[1]]
                    if r.state == states.ACCEPTED:
                        r = r.moved_to(states.IN_PROGRESS, None, None, None, r.updated + 1)
                    else:
                        r = r.moved_to(op[2], "c", "m", {"k": op[1]}, r.updated + 1)
                    body = {"event": "payment.state", "n": op[1], "state": r.state}
                    event = self.successResultOf(journal.transition(r, body, actor="x"))
                    records[op[1]], bodies[event.seq] = r, body
                    seqs.append(event.seq)
                elif op[0] == "ack" and op[1] <= journal.last_seq():
                    journal.ack_soon("cl_a", op[1])
                elif op[0] == "prune":
                    done = journal.prune(before=op[1], batch=op[2])
                    clock.pump([0] * 200)
                    self.successResultOf(done)
                    for n, r in list(records.items()):
                        if r.updated < op[1] and r.state in states.RESOLVED_STATES:
                            del records[n]
                clock.advance(2)  # acknowledgements written
                # seqs given once, in order; last_seq the highest ever given, pruned or not
                self.assertEqual(seqs, sorted(set(seqs)))
                self.assertEqual(journal.last_seq(), seqs[-1] if seqs else 0)
                conn = journal._read()
                # exactly the payments expected are kept, in their last state
                kept = {row[0]: row[1] for row in conn.execute("SELECT id, state FROM payments")}
                self.assertEqual(kept, {r.id: r.state for r in records.values()})
                # nothing outlives its payment
                self.assertEqual(conn.execute("SELECT count(*) FROM events WHERE payment_id NOT IN "
                                              "(SELECT id FROM payments)").fetchone()[0], 0)
                self.assertEqual(conn.execute("SELECT count(*) FROM transitions WHERE payment_id NOT IN "
                                              "(SELECT id FROM payments)").fetchone()[0], 0)
                # each kept event is what was given
                for event in journal.events_after("cl_a", 0, limit=10_000):
                    self.assertEqual(event.body, bodies[event.seq])
                self.assertLessEqual(journal.acked("cl_a"), journal.last_seq())
        finally:
            journal.close()


class StatementsPerWriteTests(SynchronousTestCase):
    """A payment's write alone in its transaction runs no savepoint; in a batch, each write keeps its own."""

    def setUp(self):
        self.journal = Journal.open(os.path.join(self.mktemp(), "j.sqlite3"), threaded=False)
        self.addCleanup(self.journal.close)
        self.statements = []
        self.journal._writer._conn.set_trace_callback(self.statements.append)

    def test_a_write_alone_is_begin_its_statements_and_commit(self):
        self.successResultOf(self.journal.create(record(1), {}, actor="x"))
        self.assertEqual([s.split()[0] for s in self.statements], ["BEGIN", "INSERT", "INSERT", "INSERT", "COMMIT"])

    def test_a_refused_write_alone_leaves_nothing_and_the_next_one_goes_through(self):
        self.successResultOf(self.journal.create(record(1), {}, actor="x"))
        self.journal.ack_soon("cl_b", 1)  # rides along with the next write: put back when that one is refused
        self.statements.clear()
        failure = self.failureResultOf(self.journal.create(record(2, command_id="cmd_1"), {}, actor="x"))
        self.assertEqual(failure.value.code, "duplicate_command")
        self.assertEqual(self.statements[-1], "ROLLBACK")
        self.assertNotIn("COMMIT", self.statements)
        self.assertIsNone(self.journal.get("pay_2"))
        self.assertEqual(self.successResultOf(self.journal.create(record(3), {}, actor="x")).seq, 2)
        self.assertEqual(self.journal._read().execute("SELECT seq FROM acks WHERE client_id='cl_b'").fetchone(),
                         (1,))

    def test_writes_batched_together_each_keep_a_savepoint(self):
        batch = []
        for n, command in ((1, "cmd_1"), (2, "cmd_1"), (3, "cmd_3")):
            r = record(n, command_id=command)
            batch.append((lambda conn, r=r: _create_op(conn, r), Deferred()))
        self.journal._writer._run_batch(batch)
        self.assertEqual([d.called for _, d in batch], [True, True, True])
        self.assertEqual(self.statements.count("SAVEPOINT op"), 3)
        self.assertEqual([row[0] for row in self.journal._read().execute("SELECT id FROM payments ORDER BY id")],
                         ["pay_1", "pay_3"])
        self.failureResultOf(batch[1][1], BridgeError)


def _create_op(conn, r):
    from bridge.core.journal import _insert_event, _insert_transition
    try:
        conn.execute("INSERT INTO payments (id, command_id, client_id, terminal, kind, method, amount, currency, "
                     "args_digest, state, details, created, updated) VALUES (?,?,?,?,?,?,?,?,?,?,'{}',?,?)",
                     (r.id, r.command_id, r.client_id, r.terminal, r.kind, r.method, r.amount, r.currency,
                      r.args_digest, r.state, r.created, r.updated))
    except sqlite3.IntegrityError:
        raise BridgeError("duplicate_command", "used") from None
    _insert_transition(conn, r, "x")
    return _insert_event(conn, r, {})


class PruneAfterCloseTests(SynchronousTestCase):
    def test_a_pruning_waiting_for_the_check_of_a_journal_closed_meanwhile_prunes_nothing(self):
        journal = Journal.open(os.path.join(self.mktemp(), "j.sqlite3"), reactor=Clock(), threaded=False)
        settle(journal, 1)
        journal._check_done = Deferred()
        done = journal.prune(before=10_000.0)
        journal.close()
        journal._checked("ok")
        self.assertEqual(self.successResultOf(done), 0)
