"""The journal: every payment, every transition and every event, on disk before anyone is told.

SQLite in WAL mode with ``synchronous=FULL``: a commit is fsync'd.  Writes go through one writer (a thread of
its own in the daemon, inline in unit tests) that commits everything queued so far in one transaction, so that
durability costs one fsync per batch, not one per transition (group commit).  Each write's Deferred fires only
after its batch is on disk.  Reads use a second connection; in WAL mode they see committed data and never
wait for the writer.
"""

from __future__ import annotations

import errno
import json
import os
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, List, Optional, cast

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger

from bridge.core.faults import checkpoint
from bridge.core.reactor_types import Clock, DelayedCall, ThreadedClock
from bridge.core.states import check_transition
from bridge.errors import BridgeError

SCHEMA_VERSION = 2

#: Payments deleted in one write when old ones are pruned (see :meth:`Journal.prune`).
PRUNE_BATCH = 100

#: One batch of payments to prune: final, last changed before ?1, at most ?2, oldest first.  created <= updated,
#: so ``created < ?1`` loses none and lets the created index find them (``+state`` keeps SQLite from scanning
#: the state index instead: nearly every payment is final).  A payment whose feedback an uplink has not
#: delivered yet is kept, however old: its result must still reach the cloud (the uplinks' delivery cursors are
#: ack rows named "uplink:NAME").
_PRUNE_SELECT = (
    "SELECT id FROM payments AS p WHERE created < ?1 AND updated < ?1 "
    "AND +state IN ('approved','declined','cancelled','failed') "
    "AND NOT EXISTS (SELECT 1 FROM events AS e WHERE e.payment_id = p.id AND e.seq > "
    "(SELECT min(seq) FROM acks WHERE client_id LIKE 'uplink:%')) "
    "ORDER BY created LIMIT ?2")

#: Seconds a client's acknowledgement may wait in memory before it is written (see :meth:`Journal.ack_soon`).
ACK_WRITE_DELAY = 1.0

#: The payments table.  A command id is unique per client (schema 2; it was unique over all clients in schema 1):
#: one client's ids tell nothing about another's, and never collide with them.
_PAYMENTS_TABLE = """CREATE TABLE IF NOT EXISTS {name} (
    id TEXT PRIMARY KEY,
    command_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    terminal TEXT NOT NULL,
    kind TEXT NOT NULL,
    method TEXT NOT NULL,
    amount INTEGER NOT NULL,
    currency TEXT NOT NULL,
    args_digest TEXT NOT NULL,
    state TEXT NOT NULL,
    reason_code TEXT,
    reason_message TEXT,
    details TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL,
    updated REAL NOT NULL,
    UNIQUE (client_id, command_id)
)"""

_PAYMENTS_INDEXES = """
CREATE INDEX IF NOT EXISTS payments_state ON payments (state);
CREATE INDEX IF NOT EXISTS payments_terminal_created ON payments (terminal, created);
CREATE INDEX IF NOT EXISTS payments_created ON payments (created);
-- payment.list of one client, newest first, without sorting all that client's payments
CREATE INDEX IF NOT EXISTS payments_client_created ON payments (client_id, created);
-- for refunded_amount: without it every refund scanned all the payments kept (90 days by default)
CREATE INDEX IF NOT EXISTS payments_refund_of ON payments (json_extract(details, '$.refund_of')) WHERE kind = 'refund'
"""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
""" + _PAYMENTS_TABLE.replace("{name}", "payments") + ";" + _PAYMENTS_INDEXES + """;
CREATE TABLE IF NOT EXISTS transitions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    payment_id TEXT NOT NULL REFERENCES payments (id),
    state TEXT NOT NULL,
    reason_code TEXT,
    reason_message TEXT,
    details TEXT NOT NULL DEFAULT '{}',
    actor TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS transitions_payment ON transitions (payment_id);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    client_id TEXT NOT NULL,
    payment_id TEXT NOT NULL,
    body TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_client ON events (client_id, seq);
-- pruning deletes a payment's events (and keeps those an uplink has not delivered) without scanning them all
CREATE INDEX IF NOT EXISTS events_payment ON events (payment_id);
CREATE TABLE IF NOT EXISTS acks (client_id TEXT PRIMARY KEY, seq INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class PaymentRecord:
    """One payment as the journal holds it."""

    id: str
    command_id: str
    client_id: str
    terminal: str
    kind: str
    method: str
    amount: int
    currency: str
    args_digest: str
    state: str
    reason_code: Optional[str] = None
    reason_message: Optional[str] = None
    details: dict[str, Any] = field(default_factory=dict)
    created: float = 0.0
    updated: float = 0.0

    def moved_to(self, state: str, code: Optional[str], message: Optional[str],
                 details: Optional[dict[str, Any]], at: float) -> "PaymentRecord":
        check_transition(self.state, state)
        merged = dict(self.details)
        merged.update(details or {})
        return replace(self, state=state, reason_code=code, reason_message=message, details=merged,
                       updated=at)


@dataclass(frozen=True)
class Event:
    seq: int
    client_id: str
    payment_id: str
    body: dict[str, Any]
    #: ``body`` as canonical JSON (:func:`canonical_json`), as the journal stored it, when this run wrote it:
    #: the session signs and sends it without serialising the body again (None for events read back).
    text: Optional[str] = field(default=None, compare=False, repr=False)


def canonical_json(value: Any) -> str:
    """``value`` as canonical JSON: object keys sorted by code point at every level, no insignificant white
    space, non-ASCII characters as they are (not escaped), no NaN or infinity.  What signatures cover
    (bridge/api/signing.py, docs/protocol.md) and how the journal stores events."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


_PAYMENT_COLUMNS = ("id, command_id, client_id, terminal, kind, method, amount, currency, args_digest, state, "
                    "reason_code, reason_message, details, created, updated")


def _record_from_row(row: tuple) -> PaymentRecord:
    values = list(row)
    values[12] = json.loads(values[12])
    return PaymentRecord(*values)


def _unavailable(reason: str) -> BridgeError:
    return BridgeError(
        "journal_unavailable",
        "The bridge cannot write to its journal right now (" + reason + "), so it did nothing. "
        "Ask store IT to check the bridge's disk.",
    )


Operation = Callable[[sqlite3.Connection], Any]


class _Writer:
    """Runs write operations in batches, one transaction and one fsync per batch."""

    def __init__(self, path: str, deliver: Callable[[Callable[[], None]], None], threaded: bool) -> None:
        self._path = path
        self._deliver = deliver
        self._threaded = threaded
        self._conn: Optional[sqlite3.Connection] = None
        # SimpleQueue: put and get are C, without queue.Queue's Python-level Condition (a put per journal write)
        self._queue: "queue.SimpleQueue[Optional[tuple[Operation, Deferred]]]" = queue.SimpleQueue()
        self._thread: Optional[threading.Thread] = None
        self._open = False
        self.read_only = False
        #: Told (on the writer's thread) how long each batch's COMMIT, and so its fsync, took in seconds.
        self.on_commit: Callable[[float], None] = lambda seconds: None
        self.damaged = False
        #: The writer thread's scheduling: "batch", or why it kept the usual one (see :func:`_run_when_idle`).
        self.scheduling: Optional[str] = None

    def open(self, writable: bool = True) -> None:
        """Open the write connection; with ``writable`` False (the disk is read-only) there is none and every
        batch fails with journal_unavailable until :meth:`use` hands one over (see Journal._try_writable)."""
        self._conn = _connect_writable(self._path) if writable else None
        self.read_only = not writable
        self._open = True
        if self._threaded:
            self._thread = threading.Thread(target=self._loop, name="journal-writer", daemon=True)
            self._thread.start()
            self.scheduling = _run_when_idle(cast(int, self._thread.native_id))

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._open = False

    @property
    def closed(self) -> bool:
        return not self._open

    def use(self, conn: sqlite3.Connection) -> None:
        """Write with ``conn`` from now on (a read-only spell is over).  The connection is set before the flag
        the writer thread reads, so a batch that sees the flag down also sees the connection."""
        self._conn = conn
        self.read_only = False

    def submit(self, op: Operation) -> Deferred:
        d: Deferred = Deferred()
        if not self._open:
            return fail(_unavailable("the journal is closed"))
        if self._threaded:
            self._queue.put((op, d))
        else:
            self._run_batch([(op, d)])
        return d

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            stop = False
            while True:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            self._run_batch(batch)
            if stop:
                return

    def _run_batch(self, batch: list[tuple[Operation, Deferred]]) -> None:
        if self.damaged or self.read_only:
            error = _unavailable("the journal file is damaged" if self.damaged else "the disk is read-only")
            self._deliver(lambda: _fire([(d, False, error) for _, d in batch]))
            return
        conn = self._conn
        assert conn is not None
        results: list[tuple[Deferred, bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            if len(batch) == 1:
                # Alone in its transaction (a payment at a time: the usual case), an operation needs no savepoint
                # of its own: if it refuses, the whole transaction is rolled back, and nothing is committed.
                op, d = batch[0]
                try:
                    results.append((d, True, op(conn)))
                except BridgeError as e:
                    refused = e  # ``e`` itself is unbound when the except clause ends
                    conn.execute("ROLLBACK")
                    self._deliver(lambda: _fire([(d, False, refused)]))
                    return
            else:
                for op, d in batch:
                    conn.execute("SAVEPOINT op")
                    try:
                        value = op(conn)
                    except BridgeError as e:
                        conn.execute("ROLLBACK TO op")
                        conn.execute("RELEASE op")
                        results.append((d, False, e))
                    else:
                        conn.execute("RELEASE op")
                        results.append((d, True, value))
            checkpoint("journal.before_commit")
            started = time.perf_counter()
            conn.execute("COMMIT")
            took = time.perf_counter() - started
            checkpoint("journal.after_commit")
        except sqlite3.Error as e:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            error = _unavailable(_describe_sqlite_error(e))
            results = [(d, False, error) for _, d in batch]
        else:
            try:
                self.on_commit(took)
            except Exception:  # a watcher never stops the journal
                pass
        self._deliver(lambda: _fire(results))


def _run_when_idle(thread_id: int) -> str:
    """Make the journal's writer thread SCHED_BATCH (Linux): woken, it waits for the CPU to be free instead of
    taking it from the reactor thread at once.  Returns "batch", or why not ("normal: ...").

    The daemon keeps its threads on one CPU ([bridge] cpu).  There, each write the reactor handed over woke the
    writer, and the kernel switched to it at once (a woken thread that has slept is favoured) while the reactor
    still held Python's GIL: the writer ran only to block on the GIL, and the reactor came back, two context
    switches per hand-off for nothing.  As SCHED_BATCH, the writer runs when the reactor waits for its sockets,
    having let go of the GIL (docs/performance.md, twelfth session: under load a quarter more payments a second).
    It is not a lower priority: its share of the CPU under contention is the same."""
    try:
        os.sched_setscheduler(thread_id, os.SCHED_BATCH, os.sched_param(0))
    except (AttributeError, OSError) as error:  # not Linux, or refused (a system call filter without it)
        return f"normal: {error}"
    return "batch"


def _fire(results: list[tuple[Deferred, bool, Any]]) -> None:
    for d, ok, value in results:
        if ok:
            d.callback(value)
        else:
            d.errback(value)


def _describe_sqlite_error(e: sqlite3.Error) -> str:
    text = str(e).lower()
    if "full" in text:
        return "the disk is full"
    if "readonly" in text or "read-only" in text:
        return "the disk is read-only"
    if "malformed" in text or "not a database" in text:
        return "the journal file is damaged"
    return "the journal could not be written"


class Journal:
    """The bridge's durable record.  Create with :meth:`open`."""

    log = Logger()

    def __init__(self, path: str, writer: _Writer, reader: sqlite3.Connection,
                 now: Callable[[], float], clock: Optional[Clock] = None, ack_delay: float = ACK_WRITE_DELAY) -> None:
        self.path = path
        self._writer = writer
        self._reader = reader
        self._now = now
        self._clock = clock
        self._ack_delay = ack_delay
        self._pending_acks: dict[str, int] = {}  # not written yet
        self._highest_acks: dict[str, int] = {}  # the highest each client sent in this run
        self._ack_call: Optional[DelayedCall] = None
        #: The seq of the newest event this run has journaled or read (see :meth:`last_seq`); None: not read yet.
        self._last_seq: Optional[int] = None
        #: Fires when the integrity check running beside the bridge has ended (None: none is running).
        self._check_done: Optional[Deferred] = None

    @classmethod
    def open(cls, path: str, reactor: Optional[ThreadedClock] = None, threaded: bool = True,
             now: Callable[[], float] = time.time, ack_delay: float = ACK_WRITE_DELAY) -> "Journal":
        """Open (creating if needed) the journal at ``path``.

        ``threaded`` commits on a writer thread and delivers results through ``reactor.callFromThread``;
        without it every write commits inline (unit tests).  ``reactor`` (any ``IReactorTime``) also times the
        writing of clients' acknowledgements (:meth:`ack_soon`); without one they are written at once.  Raises
        :class:`BridgeError` ``journal_unavailable`` when the file cannot be opened, migrated or fails its
        integrity check.
        """
        directory = os.path.dirname(os.path.abspath(path))
        writable = True
        try:
            os.makedirs(directory, mode=0o750, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
            # The integrity check reads the whole file (seconds for a big shop's 90 days, minutes on an SD
            # card): with a writer thread it runs beside the bridge instead of before it (_check_in_background).
            _migrate(path, check=not threaded)
            reader = _connect_reader(path)
        except (OSError, sqlite3.Error) as e:
            reason = _describe_sqlite_error(e) if isinstance(e, sqlite3.Error) else e.strerror or str(e)
            if not (_is_read_only_error(e) and os.path.exists(path)):
                raise _unavailable(reason) from e
            # A journal on a disk that went read-only (an SD card the kernel protected after errors): serve
            # what it holds, refuse every write with journal_unavailable, and write again once the disk can.
            reader = _connect_read_only(path)
            writable = False
        deliver: Callable[[Callable[[], None]], None]
        if threaded:
            deliver = cast(ThreadedClock, reactor).callFromThread  # threaded: given a reactor
        else:
            deliver = lambda f: f()  # noqa: E731
        writer = _Writer(path, deliver, threaded)
        writer.open(writable)
        if writer.scheduling is not None:
            cls.log.debug("The journal's writer thread runs with {scheduling} scheduling",
                          scheduling=writer.scheduling)
        journal = cls(path, writer, reader, now, clock=reactor, ack_delay=ack_delay)
        if threaded and writable:
            journal._check_in_background(deliver)
        return journal

    def _check_in_background(self, deliver: Callable[[Callable[[], None]], None]) -> None:
        """SQLite's integrity check of the whole file on a thread of its own (at the lowest CPU priority), its
        answer delivered on the reactor thread: a damaged journal then refuses every write with
        journal_unavailable, as it would have refused to open.  Pruning waits for it (see :meth:`prune`)."""
        if self._check_done is None:
            self._check_done = Deferred()

        def run() -> None:
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
            except (OSError, AttributeError):
                pass
            try:
                conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None)
                try:
                    result = conn.execute("PRAGMA quick_check").fetchone()[0]
                finally:
                    conn.close()
            except sqlite3.Error as e:
                result = str(e)
            deliver(lambda: self._checked(result))

        threading.Thread(target=run, name="journal-check", daemon=True).start()

    def _checked(self, result: str) -> None:
        if result != "ok" and not self.closed:
            self._writer.damaged = True
            self.log.critical("The journal file is damaged ({check}): payments are refused. Stop the bridge, "
                              "copy {path}* somewhere safe and run terminal-bridge doctor.", check=result,
                              path=self.path)
        done, self._check_done = self._check_done, None
        if done is not None:
            done.callback(None)  # a pruning waiting for the check (refused if the file is damaged)

    @property
    def writable(self) -> bool:
        return not self._writer.read_only

    def watch_commits(self, listener: Callable[[float], None]) -> None:
        """Have ``listener(seconds)`` told how long each commit (its fsync) took, on the writer's thread: it
        must be quick and thread-safe (the status page's metrics)."""
        self._writer.on_commit = listener

    def _read(self) -> sqlite3.Connection:
        return self._reader

    def _submit(self, op: Operation) -> Deferred:
        """Hand a write to the writer; while the disk is read-only, first see whether it can be written again."""
        if self._writer.read_only and not self._writer.closed:
            try:
                self._try_writable()
            except BridgeError as e:  # the journal cannot even be read again
                return fail(e)
        return self._writer.submit(op)

    def _try_writable(self) -> bool:
        """After a read-only start, open the journal for writing as soon as its disk allows it (reactor thread).

        The read-only connection must be closed first: SQLite shares one mapping of the WAL index (the -shm
        file) among a process's connections to a file, and one opened while the disk was read-only stays
        read-only, so a writable connection opened beside it could never write (issue 13, item 4)."""
        if not os.access(os.path.dirname(os.path.abspath(self.path)), os.W_OK):
            return False  # still read-only (EROFS): a system call, cheap enough for every write refused
        self._reader.close()
        threaded = self._writer._threaded
        try:
            _migrate(self.path, check=not threaded)  # the whole-file check on the reactor would stall it
            conn = _connect_writable(self.path)
            reader = _connect_reader(self.path)
        except (OSError, sqlite3.Error) as e:
            self.log.warn("The journal's disk looks writable but the journal cannot be opened for writing yet: "
                          "{error}", error=str(e), path=self.path)
            self._reader = _connect_read_only(self.path)
            return False
        self._reader = reader
        self._writer.use(conn)
        if threaded:
            self._check_in_background(self._writer._deliver)
        self.log.info("The journal can be written again ({path}): payments are taken again", path=self.path)
        return True

    @classmethod
    def open_readonly(cls, path: str) -> "Journal":
        """The journal for reading only (the `payments` command), safe beside a running bridge."""
        try:
            reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                                     check_same_thread=False)
            reader.execute("SELECT 1 FROM payments LIMIT 1")
        except sqlite3.Error as e:
            raise _unavailable(_describe_sqlite_error(e)) from e
        return cls(path, _Writer(path, lambda f: f(), threaded=False), reader, time.time)

    def close(self) -> None:
        """Write the acknowledgements still in memory, then close."""
        self.write_acks()
        self._writer.close()
        self._reader.close()

    @property
    def closed(self) -> bool:
        return self._writer.closed

    # -- writes ---------------------------------------------------------------------------------

    def create(self, record: PaymentRecord, event_body: dict[str, Any], actor: str) -> "Deferred[Event]":
        """Journal a new payment, its first transition and its first event, in one commit."""

        def op(conn: sqlite3.Connection) -> Event:
            _insert_payment(conn, record)
            _insert_transition(conn, record, actor)
            return _insert_event(conn, record, event_body)

        return self._submit_with_acks(op).addCallback(self._journaled)

    def create_and_move(self, record: PaymentRecord, event_body: dict[str, Any], actor: str,
                        moved: PaymentRecord, moved_body: dict[str, Any],
                        moved_actor: str) -> "Deferred[tuple[Event, Event]]":
        """Journal a new payment and its next state at once (``moved``, made from ``record`` by
        :meth:`PaymentRecord.moved_to`): the row as ``moved``, both transitions and both events, in one commit.

        For a payment whose terminal is ready to take the request by the time it is journaled (docs/architecture.md,
        "accepted and in_progress in one write"): one fsync instead of two, and either both states are on disk or
        neither is."""
        if (moved.id, moved.created) != (record.id, record.created):
            raise ValueError("moved must be the same payment as record")

        def op(conn: sqlite3.Connection) -> tuple[Event, Event]:
            _insert_payment(conn, moved)
            _insert_transition(conn, record, actor)
            first = _insert_event(conn, record, event_body)
            _insert_transition(conn, moved, moved_actor)
            return first, _insert_event(conn, moved, moved_body)

        def journaled(events: tuple[Event, Event]) -> tuple[Event, Event]:
            return self._journaled(events[0]), self._journaled(events[1])

        return self._submit_with_acks(op).addCallback(journaled)

    def transition(self, record: PaymentRecord, event_body: dict[str, Any], actor: str) -> "Deferred[Event]":
        """Journal ``record``'s new state (already applied to it), with its transition and event."""

        def op(conn: sqlite3.Connection) -> Event:
            details = json.dumps(record.details)
            conn.execute(
                "UPDATE payments SET state=?, reason_code=?, reason_message=?, details=?, updated=? WHERE id=?",
                (record.state, record.reason_code, record.reason_message, details, record.updated, record.id),
            )
            _insert_transition(conn, record, actor, details)
            return _insert_event(conn, record, event_body)

        return self._submit_with_acks(op).addCallback(self._journaled)

    def _journaled(self, event: Event) -> Event:
        """An event is on disk (reactor thread, before anyone hears of it): :meth:`last_seq` counts it."""
        if self._last_seq is not None and event.seq > self._last_seq:
            self._last_seq = event.seq
        return event

    def ack(self, client_id: str, seq: int) -> Deferred:
        """Record that ``client_id`` has handled every event up to ``seq``; fires once it is on disk."""

        def op(conn: sqlite3.Connection) -> None:
            _upsert_ack(conn, client_id, seq)

        return self._submit(op)

    def ack_soon(self, client_id: str, seq: int) -> None:
        """Like :meth:`ack`, for a client's ``events.ack``: counted at once (:meth:`acked` sees it), written with
        the next payment's write or, at the latest, with the other acknowledgements of the next ``ack_delay``
        seconds in one commit.

        An acknowledgement only spares the client events it already has: losing the last second of them to a
        power cut means those events are sent again, which clients handle anyway (delivery is at least once,
        deduplicated by ``seq``).  So each one does not cost an fsync of its own, on the payment's path and on
        the SD card.
        """
        if seq <= self._highest_acks.get(client_id, -1) or self._writer.closed:
            return
        self._highest_acks[client_id] = seq
        self._pending_acks[client_id] = seq
        if self._clock is None:
            self.write_acks()
        elif self._ack_call is None:
            self._ack_call = self._clock.callLater(self._ack_delay, self.write_acks)

    def _submit_with_acks(self, op: Operation) -> Deferred:
        """Submit a payment's write, with the acknowledgements waiting in memory in the same commit (they ride
        along for free; if the write fails they go back to waiting)."""
        pending, self._pending_acks = self._pending_acks, {}
        if not pending:
            return self._submit(op)

        def with_acks(conn: sqlite3.Connection) -> Any:
            for client_id, seq in pending.items():
                _upsert_ack(conn, client_id, seq)
            return op(conn)

        def put_back(failure: Any) -> Any:
            self._keep_acks(pending)
            return failure

        return self._submit(with_acks).addErrback(put_back)

    def _keep_acks(self, pending: dict[str, int]) -> None:
        for client_id, seq in pending.items():
            self._pending_acks[client_id] = max(seq, self._pending_acks.get(client_id, -1))
        if self._clock is not None and self._ack_call is None and not self._writer.closed:
            self._ack_call = self._clock.callLater(self._ack_delay, self.write_acks)

    def write_acks(self) -> "Deferred[None]":
        """Write the acknowledgements waiting in memory now.  If that fails they stay there for the next try."""
        if self._ack_call is not None and self._ack_call.active():
            self._ack_call.cancel()
        self._ack_call = None
        pending, self._pending_acks = self._pending_acks, {}
        if not pending or self._writer.closed:
            return succeed(None)

        def op(conn: sqlite3.Connection) -> None:
            for client_id, seq in pending.items():
                _upsert_ack(conn, client_id, seq)

        def failed(failure: Any) -> None:
            failure.trap(BridgeError)
            self.log.warn("Could not write clients' acknowledgements: {error} They are kept for the next try.",
                          error=failure.value.message, clients=len(pending))
            self._keep_acks(pending)

        return self._submit(op).addErrback(failed)

    def prune(self, before: float, batch: Optional[int] = None) -> "Deferred[int]":
        """Delete final payments (never ``unknown``) last changed before ``before``, with their transitions and
        events.  Fires with the number of payments removed.

        A hundred payments at a time (``batch``, default :data:`PRUNE_BATCH`), each batch a write of its
        own, the next one started on a later turn of the reactor: on a journal of two million payments a day's
        worth is 20 000 payments, and one transaction for all of them would hold the writer (and so every
        payment's write) for seconds, and the reactor too when the journal commits inline.

        While the integrity check of the whole file runs beside the bridge (the first half-minute after the
        start of a big shop's journal), pruning waits for it to end: its deletes would compete with it for the
        disk and the CPU, and would all stay in the write-ahead log, which cannot be folded back into the file
        while the check reads it."""
        limit = batch or PRUNE_BATCH
        result: "Deferred[int]" = Deferred()
        total = 0

        def step() -> None:
            self._prune_batch(before, limit).addCallbacks(done, result.errback)

        def done(count: int) -> None:
            nonlocal total
            total += count
            if count < limit:
                result.callback(total)
            elif self._clock is not None:
                self._clock.callLater(0, step)
            else:
                step()  # no reactor (unit tests, the payments command): each batch is still its own write

        if self._check_done is not None:
            # closed meanwhile (the bridge stopped during the check): nothing pruned, no error to report
            self._check_done.addCallback(lambda _: result.callback(0) if self.closed else step())
        else:
            step()
        return result

    def _prune_batch(self, before: float, limit: int) -> "Deferred[int]":
        """One batch of :meth:`prune`: at most ``limit`` payments, oldest first."""

        def op(conn: sqlite3.Connection) -> int:
            ids = [row[0] for row in conn.execute(_PRUNE_SELECT, (before, limit))]
            if not ids:
                return 0
            marks = ",".join("?" * len(ids))
            conn.execute(f"DELETE FROM transitions WHERE payment_id IN ({marks})", ids)
            conn.execute(f"DELETE FROM events WHERE payment_id IN ({marks})", ids)
            return conn.execute(f"DELETE FROM payments WHERE id IN ({marks})", ids).rowcount

        return self._submit(op)

    # -- reads ----------------------------------------------------------------------------------

    def get(self, payment_id: str) -> Optional[PaymentRecord]:
        row = self._read().execute(f"SELECT {_PAYMENT_COLUMNS} FROM payments WHERE id=?", (payment_id,)).fetchone()
        return _record_from_row(row) if row else None

    def get_by_command(self, client_id: str, command_id: str) -> Optional[PaymentRecord]:
        """The payment ``client_id`` started with ``command_id`` (command ids are each client's own)."""
        row = self._read().execute(
            f"SELECT {_PAYMENT_COLUMNS} FROM payments WHERE client_id=? AND command_id=?",
            (client_id, command_id)).fetchone()
        return _record_from_row(row) if row else None

    def in_flight(self) -> list[PaymentRecord]:
        rows = self._read().execute(
            f"SELECT {_PAYMENT_COLUMNS} FROM payments WHERE state IN ('accepted', 'in_progress') ORDER BY created"
        ).fetchall()
        return [_record_from_row(r) for r in rows]

    def list(self, terminal: Optional[str] = None, state: Optional[str] = None,
             since: Optional[float] = None, until: Optional[float] = None,
             limit: int = 50, before: Optional[tuple[float, str]] = None,
             client_id: Optional[str] = None, oldest_first: bool = False) -> list[PaymentRecord]:
        """Payments newest first (or ``oldest_first``), filtered; ``before`` is the (created, id) of the last row of
        a previous newest-first page."""
        assert not (before and oldest_first), "before pages newest first"
        where: list[str] = []
        args: list[Any] = []
        for column, value in (("terminal", terminal), ("state", state), ("client_id", client_id)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if since is not None:
            where.append("created >= ?")
            args.append(since)
        if until is not None:
            where.append("created < ?")
            args.append(until)
        if before is not None:
            where.append("(created, id) < (?, ?)")
            args.extend(before)
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        order = "ASC" if oldest_first else "DESC"
        rows = self._read().execute(
            f"SELECT {_PAYMENT_COLUMNS} FROM payments {clause} ORDER BY created {order}, id {order} LIMIT ?",
            (*args, limit),
        ).fetchall()
        return [_record_from_row(r) for r in rows]

    def count(self, state: str) -> int:
        """How many payments are in ``state`` (an index read)."""
        return int(self._read().execute("SELECT count(*) FROM payments WHERE state = ?", (state,)).fetchone()[0])

    def refunded_amount(self, payment_id: str) -> int:
        """What refunds of ``payment_id`` have taken or may have taken (approved, running or unknown)."""
        row = self._read().execute(
            "SELECT coalesce(sum(amount), 0) FROM payments WHERE kind='refund' "
            "AND json_extract(details, '$.refund_of')=? AND state NOT IN ('declined','cancelled','failed')",
            (payment_id,)).fetchone()
        return row[0]

    # typing.List below: inside this class the name ``list`` is the method above, for type checkers.
    def transitions(self, payment_id: str) -> List[dict[str, Any]]:
        rows = self._read().execute(
            "SELECT state, reason_code, reason_message, actor, at FROM transitions WHERE payment_id=? ORDER BY id",
            (payment_id,),
        ).fetchall()
        return [dict(zip(("state", "code", "message", "actor", "at"), r)) for r in rows]

    def events_after(self, client_id: str, seq: int, limit: int = 500) -> List[Event]:
        rows = self._read().execute(
            "SELECT seq, client_id, payment_id, body FROM events WHERE client_id=? AND seq>? ORDER BY seq LIMIT ?",
            (client_id, seq, limit),
        ).fetchall()
        return [Event(r[0], r[1], r[2], json.loads(r[3])) for r in rows]

    def acked(self, client_id: str) -> int:
        row = self._read().execute("SELECT seq FROM acks WHERE client_id=?", (client_id,)).fetchone()
        return max(row[0] if row else 0, self._pending_acks.get(client_id, 0))

    def last_seq(self) -> int:
        """The seq of the newest event journaled.  Read once from the file, then kept as this run journals
        events (every ``events.ack`` checks against it: a read per payment otherwise).  A journal that does
        not write (``open_readonly``, beside a running bridge) reads it every time.  Events are numbered by
        AUTOINCREMENT, so the highest seq ever given is kept by SQLite even once pruning deleted that event."""
        if self._last_seq is not None and not self._writer.closed:
            return self._last_seq
        reader = self._read()
        row = reader.execute("SELECT max(seq) FROM events").fetchone()
        last = row[0] or 0
        try:
            given = reader.execute("SELECT seq FROM sqlite_sequence WHERE name='events'").fetchone()
        except sqlite3.OperationalError:  # no sqlite_sequence yet: no event was ever written
            given = None
        last = max(last, given[0] if given else 0)
        if not self._writer.closed:
            self._last_seq = last
        return last


def _upsert_ack(conn: sqlite3.Connection, client_id: str, seq: int) -> None:
    conn.execute(
        "INSERT INTO acks (client_id, seq) VALUES (?, ?) "
        "ON CONFLICT (client_id) DO UPDATE SET seq = max(seq, excluded.seq)",
        (client_id, seq),
    )


def _insert_payment(conn: sqlite3.Connection, record: PaymentRecord) -> None:
    try:
        conn.execute(
            f"INSERT INTO payments ({_PAYMENT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (record.id, record.command_id, record.client_id, record.terminal, record.kind,
             record.method, record.amount, record.currency, record.args_digest, record.state,
             record.reason_code, record.reason_message, json.dumps(record.details),
             record.created, record.updated),
        )
    except sqlite3.IntegrityError:
        raise BridgeError("duplicate_command", "This command id was already used.") from None


def _insert_transition(conn: sqlite3.Connection, record: PaymentRecord, actor: str,
                       details: Optional[str] = None) -> None:
    conn.execute(
        "INSERT INTO transitions (payment_id, state, reason_code, reason_message, details, actor, at) "
        "VALUES (?,?,?,?,?,?,?)",
        (record.id, record.state, record.reason_code, record.reason_message,
         json.dumps(record.details) if details is None else details, actor, record.updated),
    )


def _insert_event(conn: sqlite3.Connection, record: PaymentRecord, body: dict[str, Any]) -> Event:
    text: Optional[str]
    try:
        stored = text = canonical_json(body)
    except ValueError:  # NaN or infinity somewhere (a driver's details): stored as before, never sent as is
        stored, text = json.dumps(body, sort_keys=True), None
    cursor = conn.execute(
        "INSERT INTO events (client_id, payment_id, body, created) VALUES (?,?,?,?)",
        (record.client_id, record.id, stored, record.updated),
    )
    return Event(cast(int, cursor.lastrowid), record.client_id, record.id, body, text)


#: SQLite's page cache per connection, in KiB (its default is 2000): the journal's hot rows are few and recent,
#: and a Raspberry Pi's memory is better left to the page cache of the kernel.
CACHE_KIB = 512


def _connect_writable(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
    return conn


def _connect_reader(path: str) -> sqlite3.Connection:
    reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    reader.execute("PRAGMA query_only=ON")
    reader.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
    return reader


def _connect_read_only(path: str) -> sqlite3.Connection:
    """A connection that only reads, for a journal on a read-only disk.  A WAL journal whose -shm file is
    gone cannot be opened read-only unless SQLite is told the file will not change (immutable)."""
    last: Optional[sqlite3.Error] = None
    for options in ("mode=ro", "mode=ro&immutable=1"):
        try:
            conn = sqlite3.connect(f"file:{path}?{options}", uri=True, isolation_level=None,
                                   check_same_thread=False)
            row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.Error as e:
            last = e
            continue
        if row is None or int(row[0]) != SCHEMA_VERSION:
            conn.close()
            raise _unavailable("the journal needs an upgrade, which a read-only disk does not allow")
        return conn
    assert last is not None
    raise _unavailable(_describe_sqlite_error(last)) from last


def _is_read_only_error(e: BaseException) -> bool:
    if isinstance(e, OSError):
        return e.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
    text = str(e).lower()
    return "readonly" in text or "read-only" in text


def _migrate(path: str, check: bool = True) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        if check:
            result = conn.execute("PRAGMA quick_check").fetchone()[0]
            if result != "ok":
                raise sqlite3.DatabaseError(f"database disk image is malformed ({result})")
        conn.execute("BEGIN IMMEDIATE")
        cookie = conn.execute("PRAGMA schema_version").fetchone()[0]  # SQLite's: changes with any table or index
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"journal schema {version} is newer than this bridge understands ({SCHEMA_VERSION})")
        if version == SCHEMA_VERSION and conn.execute("PRAGMA schema_version").fetchone()[0] == cookie:
            # Nothing to change (every start of a current journal): no commit, so no fsync of the WAL, and no
            # checkpoint into the journal file as this connection closes, whose fsync would wait for every page
            # of that file still to be written back by the kernel (a journal restored from a copy: seconds).
            conn.execute("ROLLBACK")
            return
        for target in range(version + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS.get(target, ()):
                conn.execute(statement)
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                     (str(SCHEMA_VERSION),))
        conn.execute("COMMIT")
    finally:
        conn.close()


#: Statements that bring a journal of version N-1 to version N.  Version 1 is the first schema.
_MIGRATIONS: dict[int, Iterable[str]] = {
    1: (),
    # 2: command ids unique per client, not over all clients.  SQLite cannot drop a UNIQUE constraint: the
    # table is rebuilt (same columns and rows), in the migration's transaction.
    2: (
        _PAYMENTS_TABLE.replace("{name}", "payments_v2"),
        f"INSERT INTO payments_v2 ({_PAYMENT_COLUMNS}) SELECT {_PAYMENT_COLUMNS} FROM payments",
        "DROP TABLE payments",
        "ALTER TABLE payments_v2 RENAME TO payments",
        *(statement for statement in _PAYMENTS_INDEXES.split(";") if statement.strip()),
    ),
}
