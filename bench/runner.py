"""One benchmark run, start to end: the machine, the simulators, the bridge started twice (first and second
start), the measuring phases, the journal checked against the payments sent, the status page phase, the
libraries-only memory baseline, and the report printed."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional

import bridge_process
from bridge_process import BridgeProcess, write_config
from common import TERMINALS, BenchError
from machine import machine
from measurement import measure
from placement import confine, plan
from processes import child_env, free_port, stop_process, unit_environment
from report import TARGETS, journal_report, memory_report, report, status_report
from sampling import environment_of, proc_cpu_seconds, proc_status, self_cpu_seconds, system_cpu_seconds
from simulators import start_simulators
from status_phase import status_phase


def benchmark_states(directory: str) -> dict[str, int]:
    """The benchmark's own clients' payments in the journal, counted by state (--journal-payments adds other
    clients' payments before the start)."""
    journal = sqlite3.connect(f"file:{os.path.join(directory, 'state', 'journal.sqlite3')}?mode=ro", uri=True)
    try:
        return dict(journal.execute("SELECT state, count(*) FROM payments WHERE client_id LIKE 'cl_bench_%' "
                                    "GROUP BY state").fetchall())
    finally:
        journal.close()


def run(args: argparse.Namespace) -> int:
    """The whole benchmark; the exit status (see bench.py)."""
    bridge_process.BRIDGE_CGROUP = args.bridge_cgroup

    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)  # clean up children and the directory on SIGTERM too
    base = args.dir
    if base:
        os.makedirs(base, exist_ok=True)
    directory = tempfile.mkdtemp(prefix="tb-bench-", dir=base)
    placement = plan()
    bridge_process.BRIDGE_CPUS = placement.allowed
    simulators: Optional[subprocess.Popen] = None
    echo: Optional[subprocess.Popen] = None
    bridges: list[BridgeProcess] = []
    ok = False
    try:
        print("terminal-bridge benchmark: measuring the machine and starting "
              f"{TERMINALS} simulated terminals", file=sys.stderr, flush=True)
        info = machine(directory)
        info["placement"] = placement.describe()
        confine(placement.harness)  # this process and the simulators: off the bridge's CPU
        simulators, sim_ports, _ = start_simulators(TERMINALS)
        echo, _, echo_port = start_simulators(0, echo=True, cpus=placement.server)
        assert echo_port is not None
        port = free_port()
        config = write_config(directory, port, sim_ports)
        with open(os.path.join(directory, "clients.json"), encoding="utf-8") as f:
            clients = json.load(f)
        r: dict[str, Any] = {}
        if args.journal_payments:
            from journal_growth import prefill  # bench/ is sys.path[0]: bench.py runs as a script

            r["journal_prefill"] = prefill(os.path.join(directory, "state"), args.journal_payments)

        print("  .. first start of the bridge (fresh state: makes its TLS key)", file=sys.stderr, flush=True)
        first = BridgeProcess(directory, config, port, "first")
        bridges.append(first)
        r["ready_first"], r["accept_first"] = first.start()
        if first.stop() is None:
            raise BenchError("the bridge did not stop cleanly after its first start")
        if first.proc is not None and first.proc.returncode != 0:
            raise BenchError(f"the bridge's first run exited with status {first.proc.returncode}")
        print("  .. second start of the bridge", file=sys.stderr, flush=True)
        bridge = BridgeProcess(directory, config, port, "second",
                               profile=os.path.abspath(args.profile) if args.profile else None, trace_imports=True)
        bridges.append(bridge)
        r["ready_second"], r["accept_second"] = bridge.start()
        if args.journal_payments:
            from journal_growth import wait_for_integrity_check

            r["journal_check_seconds"] = wait_for_integrity_check(bridge.pid)
        r["rss_ready"] = proc_status(bridge.pid, "VmRSS")
        r["bridge_cpus"] = sorted(os.sched_getaffinity(bridge.pid))
        unit = unit_environment()
        r["unit_environment"] = None if unit is None else environment_of(bridge.pid, unit)

        from bridge.api.tls import fingerprint_of_pem

        with open(os.path.join(directory, "state", "tls", "bridge.crt"), "rb") as f:
            fingerprint = fingerprint_of_pem(f.read())
        load_before = os.getloadavg()[0]
        busy0, steal0 = system_cpu_seconds()
        ours0 = (proc_cpu_seconds(bridge.pid) + proc_cpu_seconds(simulators.pid) + proc_cpu_seconds(echo.pid)
                 + self_cpu_seconds())
        t0 = time.perf_counter()
        figures, bridge_payments, not_approved = measure(
            args, f"wss://127.0.0.1:{port}", fingerprint, clients, sim_ports, bridge.pid, simulators.pid, echo_port,
            echo_pid=echo.pid, probe_dir=directory, probe_cpus=placement.server, log_size=bridge.log_size)
        r.update(figures)
        elapsed = time.perf_counter() - t0
        busy1, steal1 = system_cpu_seconds()
        ours1 = (proc_cpu_seconds(bridge.pid) + proc_cpu_seconds(simulators.pid) + proc_cpu_seconds(echo.pid)
                 + self_cpu_seconds())
        r["measure_seconds"] = elapsed
        r["load_before"] = load_before
        r["other_cpu_pct"] = max(0.0, 100 * ((busy1 - busy0) - (ours1 - ours0)) / elapsed)
        r["steal_pct"] = 100 * (steal1 - steal0) / elapsed
        r["stop_seconds"] = bridge.stop()
        if r["stop_seconds"] is None:
            raise BenchError("the bridge did not stop within 15 s of SIGTERM")
        if bridge.proc is not None and bridge.proc.returncode != 0:
            raise BenchError(f"the bridge exited with status {bridge.proc.returncode}")

        if not_approved:
            raise BenchError(f"{len(not_approved)} payment(s) did not end approved, e.g. {not_approved[:3]}")
        states = benchmark_states(directory)
        if states != {"approved": bridge_payments}:
            raise BenchError(f"the journal holds {states}, expected {bridge_payments} approved payments")
        status_figures, status_payments = status_phase(args, directory, config, port, clients[0], bridges)
        r.update(status_figures)
        bridge_payments += status_payments
        states = benchmark_states(directory)
        if states != {"approved": bridge_payments}:
            raise BenchError(f"after the status page phase the journal holds {states}, expected "
                             f"{bridge_payments} approved payments")
        problems = sum(b.log_problems() for b in bridges)
        from baseline import libraries_only_rss  # bench/ is sys.path[0]: bench.py runs as a script

        r["rss_libraries"], r["libraries_modules"], r["libraries_modules_seen_running"] = libraries_only_rss(
            child_env(), lambda pid: proc_status(pid, "VmRSS"), bridge.imported_modules(r.get("log_bytes_at_rss")))

        print(report(info, r, args.quick) + status_report(r), flush=True)
        print(memory_report(r), flush=True)
        print(journal_report(bridge_payments, problems), flush=True)
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump({"machine": info, "figures": r, "quick": args.quick,
                           "targets": {k: t[0] for k, t in TARGETS.items()}}, f, indent=2, sort_keys=True)
        ok = True
        return 0
    except (BenchError, OSError, subprocess.SubprocessError) as e:
        print(f"benchmark failed: {e}", file=sys.stderr)
        for b in bridges:
            tail = b.log_tail()
            if tail:
                print(f"--- end of the bridge's log ({b.name} start) ---\n{tail}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("benchmark interrupted", file=sys.stderr)
        return 130
    finally:
        for b in bridges:
            b.stop()
        stop_process(simulators)
        stop_process(echo)
        confine(placement.allowed)
        if args.keep or not ok and os.environ.get("TB_BENCH_KEEP"):
            print(f"kept {directory}", file=sys.stderr)
        else:
            shutil.rmtree(directory, ignore_errors=True)
