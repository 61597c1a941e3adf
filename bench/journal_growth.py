#!/usr/bin/env python3
"""What a big journal costs: build one fast, then time what grows with it.

``python bench/journal_growth.py --payments 2000000`` builds a journal of that many payments (90 days of a big
shop: 3 transitions and 3 events each, like a real approved payment) straight through SQLite in a few big
transactions, then measures, in this process, with the bridge's own Journal class:

* opening it (what the daemon does before it is ready: migration check, integrity check, connections);
* the first page of ``payments`` (every client's, newest first) and of ``payment.list`` (one client's);
* the replay of a client that was away for a long time: the first page of its events after an old seq, and the
  memory that takes;
* pruning one day's worth of old payments: the longest single batch (what the reactor would wait for if it
  ran there) and the number of batches.

``bench.py --journal-payments N`` uses :func:`generate` to start the measured bridge on such a journal, which
measures the added latency and start-to-ready with it.  Every figure is printed with its target and PASS/MISS.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sqlite3
import sys
import tempfile
import time
import queue
import random
import tracemalloc
import uuid
from typing import Any, Callable, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

DAY = 86400.0
#: The client ids the generated payments belong to: none of them is a benchmark client (cl_bench_N), so the
#: benchmark's journal check can tell its own payments from the generated ones.
ARCHIVE_CLIENTS = tuple(f"cl_archive_{i}" for i in range(10))
#: The one that has been away: its last acknowledgement is from the first day.
AWAY_CLIENT = ARCHIVE_CLIENTS[0]

TARGETS = {
    "open": ("<= 1000 ms", lambda v: v <= 1000.0),
    "list_all": ("<= 50 ms", lambda v: v <= 50.0),
    "list_client": ("<= 50 ms", lambda v: v <= 50.0),
    # judged on the turns less the time the kernel kept the thread waiting for a CPU (see _Turns.run): what
    # the pruning held the reactor for, not what the machine's other load did to it
    "prune_held_max": ("<= 10 ms", lambda v: v <= 10.0),
}


def generate(path: str, payments: int, days: float = 90.0, now: Optional[float] = None,
             terminals: int = 50) -> dict[str, Any]:
    """Write a journal of ``payments`` approved payments spread evenly over the ``days`` before ``now``.
    Returns what was written (the away client's acknowledged seq among it)."""
    from bridge.core.journal import _migrate

    now = time.time() if now is None else now
    _migrate(path)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")  # a generator: the figures are about reading it, not writing it
    conn.execute("PRAGMA cache_size=-200000")
    step = days * DAY / max(payments, 1)
    start = now - days * DAY
    seq = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
    # Loading without the secondary indexes and building them afterwards (as opening the journal does) is
    # several times faster than keeping them up to date row by row.
    indexes = [name for (name,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type='index' AND sql IS NOT NULL")]
    for name in indexes:
        conn.execute(f"DROP INDEX {name}")
    chunk = 20000
    done = 0
    # Random ids, as the bridge made them before it made time-ordered ones (bridge/core/payments.py): a shop's
    # 90 days of them are what a new payment's index entries go in among (seeded: the same journal each time).
    rng = random.Random(payments)
    while done < payments:
        count = min(chunk, payments - done)
        pay_rows, transition_rows, event_rows = [], [], []
        for i in range(done, done + count):
            created = start + i * step
            client = ARCHIVE_CLIENTS[i % len(ARCHIVE_CLIENTS)]
            terminal = f"t{i % terminals}"
            pid = "pay_" + uuid.UUID(int=rng.getrandbits(128), version=4).hex
            details = json.dumps({"terminal_ref": f"{i:012d}", "card": "VISA ****4242"})
            pay_rows.append((pid, f"cmd-{i}", client, terminal, "payment", "card", 1234, "EUR", "digest", "approved",
                             None, None, details, created, created + 2.0))
            for n, state in enumerate(("accepted", "in_progress", "approved")):
                at = created + n
                transition_rows.append((pid, state, None, None, details if n == 2 else "{}", "core", at))
                seq += 1
                body = json.dumps({"type": "payment.state", "payment_id": pid, "command_id": f"cmd-{i}",
                                   "state": state, "terminal": terminal, "amount": 1234, "currency": "EUR",
                                   "at": at}, sort_keys=True)
                event_rows.append((seq, client, pid, body, at))
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO payments (id, command_id, client_id, terminal, kind, method, amount, currency, args_digest, "
            "state, reason_code, reason_message, details, created, updated) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            pay_rows)
        conn.executemany("INSERT INTO transitions (payment_id, state, reason_code, reason_message, details, actor, "
                         "at) VALUES (?,?,?,?,?,?,?)", transition_rows)
        conn.executemany("INSERT INTO events (seq, client_id, payment_id, body, created) VALUES (?,?,?,?,?)",
                         event_rows)
        conn.execute("COMMIT")
        done += count
    away_seq = min(seq, 3 * len(ARCHIVE_CLIENTS) * 100)
    conn.execute("BEGIN")
    for client in ARCHIVE_CLIENTS:
        conn.execute("INSERT OR REPLACE INTO acks (client_id, seq) VALUES (?, ?)",
                     (client, away_seq if client == AWAY_CLIENT else seq))
    conn.execute("COMMIT")
    conn.close()
    _migrate(path, check=False)  # the indexes again
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return {"payments": payments, "last_seq": seq, "away_seq": away_seq, "size_mb": os.path.getsize(path) / 1e6}


def prefill(state_dir: str, payments: int) -> dict[str, Any]:
    """For ``bench.py --journal-payments``: the journal of a bridge whose state is ``state_dir``, built before
    its first start."""
    import shutil

    os.makedirs(state_dir, mode=0o750, exist_ok=True)
    target = os.path.join(state_dir, "journal.sqlite3")
    cache = os.environ.get("TB_BENCH_JOURNAL_CACHE")  # set by --latency: build once, copy for each run
    built = os.path.join(cache, f"journal-{payments}.sqlite3") if cache else None
    if built and os.path.exists(built):
        print(f"  .. copying the journal of {payments} payments built earlier in this run", file=sys.stderr,
              flush=True)
        shutil.copyfile(built, target)
        _flushed(target)
        with open(built + ".json", encoding="utf-8") as f:
            return json.load(f)
    print(f"  .. building a journal of {payments} payments before the bridge starts", file=sys.stderr, flush=True)
    made = generate(target, payments)
    if built:
        shutil.copyfile(target, built)
        _flushed(built)
        with open(built + ".json", "w", encoding="utf-8") as f:
            json.dump(made, f)
    return made


def _flushed(path: str) -> None:
    """Wait until a copied journal is on disk.  Right after a copy of gigabytes, the kernel still holds about
    2 GB of it to write back; the bridge's first fsync of the file at its start then waited for all of it (1.3 s
    here), which measured the copy, not the bridge: a shop does not start on a journal copied a second ago."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def wait_for_integrity_check(pid: int, timeout: float = 300.0) -> float:
    """Wait until the bridge ``pid``'s integrity check thread has ended (it is the thread at nice 19); the
    seconds waited.  The figures measured meanwhile would be the first half-minute's after a start, not the
    steady state's."""
    t0 = time.perf_counter()
    print("  .. waiting for the bridge's journal integrity check to end (the thread at nice 19)", file=sys.stderr,
          flush=True)
    while time.perf_counter() - t0 < timeout:
        niced = False
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    if int(f.read().rpartition(")")[2].split()[16]) == 19:
                        niced = True
            except (OSError, ValueError, IndexError):
                pass
        if not niced:
            break
        time.sleep(0.2)
    return time.perf_counter() - t0


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000


class _Turns:
    """A stand-in for the reactor for :func:`measure`: the journal's threads hand it calls
    (``callFromThread``, ``callLater``), and :meth:`run` runs them on this thread, timing every turn."""

    class _Call:
        def active(self) -> bool:
            return False

        def cancel(self) -> None:
            pass

    def __init__(self) -> None:
        self.calls: "queue.Queue[Callable[[], Any]]" = queue.Queue()

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        self.calls.put(lambda: f(*args))

    def callLater(self, delay: float, f: Callable[..., Any], *args: Any) -> "_Turns._Call":
        self.calls.put(lambda: f(*args))
        return self._Call()

    def run(self, until: Callable[[], bool]) -> tuple[float, float]:
        """Run calls until ``until()``; the longest turn and the 99th percentile, in ms (a wait of 1 ms for a
        call is a turn too, so a reactor held up by this process's other threads, through the GIL, shows as a
        long turn).  :attr:`held` is then the same two figures less, in each turn, the time the kernel kept this
        thread waiting for a CPU (its run queue delay, /proc/thread-self/schedstat): what this process held the
        reactor for (its own work, and waiting for the GIL its other threads held), not the machine's load."""
        turns, held = [], []
        last, last_queued, last_faults = time.perf_counter(), _run_queue_delay(), _major_faults()
        worst = (0.0, 0)
        while not until():
            try:
                self.calls.get(timeout=0.001)()
            except queue.Empty:
                pass
            now, queued, faults = time.perf_counter(), _run_queue_delay(), _major_faults()
            turns.append((now - last) * 1000)
            held.append(max(0.0, (now - last) * 1000 - (queued - last_queued)))
            if held[-1] > worst[0]:
                worst = (held[-1], faults - last_faults)
            last, last_queued, last_faults = now, queued, faults
        self.held = _top(held)
        self.worst_faults = worst[1]
        return _top(turns)

    held: tuple[float, float] = (0.0, 0.0)
    #: Major page faults (a page of the program read back from disk) of the thread in its longest held turn.
    worst_faults = 0


def _top(values: list[float]) -> tuple[float, float]:
    """The largest of ``values`` and their 99th percentile (0, 0 for none)."""
    values = sorted(values)
    return (values[-1], values[int(len(values) * 0.99)]) if values else (0.0, 0.0)


def _major_faults() -> int:
    """This thread's major page faults so far (pages it had to wait for from disk; 0 where unknown)."""
    try:
        with open("/proc/thread-self/stat", "rb") as f:
            return int(f.read().rpartition(b")")[2].split()[9])
    except (OSError, ValueError, IndexError):
        return 0


def _run_queue_delay() -> float:
    """Milliseconds this thread has spent runnable but waiting for a CPU since it started (0 where the kernel
    does not say)."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as f:
            return int(f.read().split()[1]) / 1e6
    except (OSError, ValueError, IndexError):
        return 0.0


def measure(path: str, away_seq: int, now: Optional[float] = None) -> dict[str, Any]:
    """Time the operations that grow with the journal on the journal at ``path`` (which this prunes a day of),
    with the journal as the daemon opens it (a writer thread, the integrity check on a thread of its own)."""
    from bridge.core.journal import Journal

    now = time.time() if now is None else now
    r: dict[str, Any] = {}
    turns = _Turns()
    t0 = time.perf_counter()
    journal = Journal.open(path, reactor=turns, threaded=True)
    r["open"] = _ms(t0)
    try:
        t0 = time.perf_counter()
        page = journal.list(limit=51)
        r["list_all"] = _ms(t0)
        assert len(page) == 51
        t0 = time.perf_counter()
        journal.list(limit=51, client_id=ARCHIVE_CLIENTS[3])
        r["list_client"] = _ms(t0)
        t0 = time.perf_counter()
        journal.in_flight()
        journal.last_seq()
        r["in_flight"] = _ms(t0)
        t0 = time.perf_counter()
        events = journal.events_after(AWAY_CLIENT, away_seq, limit=1001)
        r["replay_page"] = _ms(t0)
        r["replay_page_events"] = len(events)
        del events
        tracemalloc.start()
        journal.events_after(AWAY_CLIENT, away_seq, limit=1001)
        r["replay_page_kib"] = tracemalloc.get_traced_memory()[1] / 1024
        tracemalloc.stop()
        r["replay_waiting"] = journal._read().execute(
            "SELECT count(*) FROM events WHERE client_id=? AND seq>?", (AWAY_CLIENT, away_seq)).fetchone()[0]

        # Pruning: the oldest day goes (as when the retention time moves on by a day), batch by batch, each
        # batch's write on the writer thread, the next batch started from a turn of the stand-in reactor.
        oldest = journal._read().execute("SELECT min(updated) FROM payments").fetchone()[0] or now
        batches: list[float] = []
        original = journal._prune_batch

        def timed(before: float, limit: int) -> Any:
            t0 = time.perf_counter()
            return original(before, limit).addCallback(lambda count: batches.append(_ms(t0)) or count)

        journal._prune_batch = timed  # type: ignore[method-assign]
        # Pruning waits for the integrity check running beside the bridge (Journal.prune): wait for it here too,
        # so that the turns below are the pruning's, and say how long that was.
        t0 = time.perf_counter()
        turns.run(lambda: journal._check_done is None)
        r["check_wait"] = _ms(t0)
        # The same stand-in reactor with nothing to do, for as long as the pruning below is expected to take:
        # what this machine's load alone does to a turn.
        idle_until = time.perf_counter() + 0.5
        r["idle_turn_max"], r["idle_turn_p99"] = turns.run(lambda: time.perf_counter() > idle_until)
        r["idle_held_max"], r["idle_held_p99"] = turns.held
        pruned: list[int] = []
        collections: list[float] = []
        started: list[float] = []

        def collector(phase: str, info: dict[str, Any]) -> None:
            # Python's cyclic garbage collector stops every thread while it runs: a long collection is a long turn
            # whatever the pruning does, so its longest pause is printed beside the turns.
            if phase == "start":
                started[:] = [time.perf_counter()]
            elif started:
                collections.append(_ms(started[0]))

        gc.callbacks.append(collector)
        try:
            t0 = time.perf_counter()
            journal.prune(oldest + DAY).addCallback(pruned.append)
            r["prune_turn_max"], r["prune_turn_p99"] = turns.run(lambda: bool(pruned))
            r["prune_held_max"], r["prune_held_p99"] = turns.held
            r["prune_held_max_faults"] = turns.worst_faults
        finally:
            gc.callbacks.remove(collector)
        r["prune_gc_max"] = max(collections, default=0.0)
        r["prune_gc_count"] = len(collections)
        r["prune_total"] = _ms(t0)
        r["pruned"] = pruned[0]
        r["prune_batches"] = len(batches)
        r["prune_batch_max"] = max(batches) if batches else 0.0
    finally:
        journal.close()
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    t0 = time.perf_counter()
    r["check"] = conn.execute("PRAGMA quick_check").fetchone()[0]
    r["check_ms"] = _ms(t0)
    conn.close()
    return r


def report(size: int, r: dict[str, Any]) -> str:
    def flag(key: str) -> str:
        text, check = TARGETS[key]
        return f"{text} {'PASS' if check(r[key]) else 'MISS'}"

    return "\n".join([
        f"journal of {size} payments ({r.get('size_mb', 0):.0f} MB on disk)",
        f"  open (as the daemon does, before it is ready)          {r['open']:8.1f} ms   {flag('open')}",
        f"  integrity check (on a thread of its own, after ready)  {r['check_ms']:8.0f} ms ({r['check']})",
        f"  payments, first page (all clients, newest first)       {r['list_all']:8.2f} ms   {flag('list_all')}",
        f"  payment.list, first page (one client)                  {r['list_client']:8.2f} ms   "
        f"{flag('list_client')}",
        f"  payments in flight + last seq (start-up reads)         {r['in_flight']:8.2f} ms",
        f"  replay after a long disconnect: first page             {r['replay_page']:8.2f} ms, "
        f"{r['replay_page_events']} events, {r['replay_page_kib']:.0f} KiB peak, of {r['replay_waiting']} waiting",
        f"  pruning one day ({r['pruned']} payments, {r['prune_batches']} batches, {r['prune_total']:.0f} ms in all): "
        f"longest reactor turn held by the process {r['prune_held_max']:.2f} ms (p99 {r['prune_held_p99']:.2f})   "
        f"{flag('prune_held_max')}",
        f"    the same turns as the clock sees them (with the time the kernel left the thread waiting for a CPU): "
        f"longest {r['prune_turn_max']:.2f} ms (p99 {r['prune_turn_p99']:.2f})",
        f"    the same stand-in reactor with nothing to do for 0.5 s (this machine's load): longest turn "
        f"{r['idle_turn_max']:.2f} ms (p99 {r['idle_turn_p99']:.2f}), held by the process "
        f"{r['idle_held_max']:.2f} ms",
        f"    a batch from its start to on disk (what a payment's write may wait behind), longest "
        f"{r['prune_batch_max']:.1f} ms; it started once the integrity check had ended, "
        f"{r.get('check_wait', 0.0):.0f} ms after the open",
        f"    Python's garbage collector meanwhile (it stops every thread): {r.get('prune_gc_count', 0)} collections, "
        f"the longest {r.get('prune_gc_max', 0.0):.2f} ms; major page faults of the reactor thread in its longest "
        f"held turn: {r.get('prune_held_max_faults', 0)}",
    ])


def latency(payments: int, bench_args: list[str], rounds: int = 2) -> int:
    """``--latency N``: ``bench.py`` on an empty journal, then on one of N payments, alternating, ``rounds``
    times each; the added latency with N against the empty journal's of the same round, and start to ready."""

    figures: dict[int, list[dict[str, Any]]] = {0: [], payments: []}
    cache = tempfile.mkdtemp(prefix="tb-growth-cache-", dir=os.environ.get("TMPDIR"))
    os.environ["TB_BENCH_JOURNAL_CACHE"] = cache
    try:
        for size in (0, payments) * rounds:
            if not _bench_once(size, bench_args, figures[size]):
                return 1
    finally:
        for name in os.listdir(cache):
            os.unlink(os.path.join(cache, name))
        os.rmdir(cache)
    print(f"journal growth: the same benchmark with an empty journal and with {payments} payments, alternating, "
          f"{rounds} time(s) each", flush=True)
    for n in range(rounds):
        _compare(payments, figures[0][n], figures[payments][n], f"run {n + 1}: ")
    return 0


def _bench_once(size: int, bench_args: list[str], into: list[dict[str, Any]]) -> bool:
    import subprocess

    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [sys.executable, os.path.join(ROOT, "bench", "bench.py"), "--json", out.name, *bench_args]
        if size:
            command += ["--journal-payments", str(size)]
        print(f"  .. bench.py with a journal of {size} payments", file=sys.stderr, flush=True)
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
        print(done.stdout, flush=True)
        if done.returncode != 0:
            print(f"bench.py failed (status {done.returncode})", flush=True)
            return False
        with open(out.name, encoding="utf-8") as f:
            into.append(json.load(f)["figures"])
    return True


def _compare(payments: int, empty: dict[str, Any], big: dict[str, Any], prefix: str) -> None:
    for key, label in (("added_p50_1", "1 terminal, added latency p50"), ("added_p99_1", "1 terminal, added "
                                                                                        "latency p99")):
        ratio = big[key] / empty[key] if empty[key] > 0 else math.inf
        verdict = "PASS" if ratio <= 1.10 else "MISS"
        print(f"  {prefix}{label}: {empty[key]:.2f} ms empty, {big[key]:.2f} ms with {payments}: x{ratio:.2f} "
              f"(target <= x1.10) {verdict}", flush=True)
    for key, label in (("ready_first", "first start"), ("ready_second", "second start")):
        verdict = "PASS" if big[key] <= 1.0 else "MISS"
        print(f"  {prefix}start to ready with {payments} payments, {label}: {big[key]:.2f} s "
              f"(empty: {empty[key]:.2f} s) (target <= 1 s) {verdict}", flush=True)
    print(f"  {prefix}throughput: {empty['throughput']:.0f}/s empty, {big['throughput']:.0f}/s with {payments}",
          flush=True)
    print(f"  {prefix}(measured after the bridge's integrity check of the journal ended, "
          f"{big.get('journal_check_seconds', 0):.1f} s after ready)", flush=True)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--payments", type=int, nargs="+", default=[10_000, 100_000, 1_000_000, 2_000_000],
                   help="journal sizes to build and measure (default: 10k 100k 1M 2M)")
    p.add_argument("--dir", help="where to build the journals (default: a temporary directory, removed after)")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON to FILE")
    p.add_argument("--latency", type=int, metavar="N", help="instead: run bench.py with an empty journal and with "
                   "one of N payments, and compare (arguments after -- go to bench.py)")
    argv = sys.argv[1:] if argv is None else argv
    bench_args = argv[argv.index("--") + 1:] if "--" in argv else []
    args = p.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if args.latency:
        print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
        status = latency(args.latency, bench_args)
        print(f"load average after: {os.getloadavg()[0]:.2f}", flush=True)
        return status
    base = tempfile.mkdtemp(prefix="tb-growth-", dir=args.dir)
    results = {}
    try:
        print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
        for size in args.payments:
            path = os.path.join(base, f"journal-{size}.sqlite3")
            t0 = time.perf_counter()
            made = generate(path, size)
            print(f"  .. built {size} payments in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
            r = measure(path, made["away_seq"])
            r["size_mb"] = made["size_mb"]
            results[size] = r
            print(report(size, r), flush=True)
            os.unlink(path)
        print(f"load average after: {os.getloadavg()[0]:.2f}", flush=True)
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(results, f, indent=2)
    finally:
        for name in os.listdir(base):
            os.unlink(os.path.join(base, name))
        os.rmdir(base)
    return 0


if __name__ == "__main__":
    sys.exit(main())
