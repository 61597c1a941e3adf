#!/usr/bin/env python3
"""`make bench`: how much a payment through terminal-bridge costs over a payment sent straight to the terminal.

One run on one machine prints:

* the round trip of a payment sent straight over TCP to a Caisse-AP simulator that answers at once, and the
  same payment through the bridge (TLS WebSocket -> bridge -> TCP -> simulator -> final event back), with their
  difference at p50 and p99, with 1 terminal and with 50 terminals paying at once;
* payments per second through one bridge, with 50 terminals kept busy;
* the bridge's resident memory after that load;
* the time from spawning ``terminal-bridge run`` to READY=1 on the sd_notify socket (first start, which makes
  the TLS key, and second start), with the first TCP connection accepted as a cross-check.

Four processes take part, all on 127.0.0.1: this one (the measuring client: the WebSocket clients and the
direct TCP baseline), the bridge (``python -m bridge -c CONFIG run``, the real daemon with its real journal),
the simulators (``bench.py --serve-simulators N``, every terminal a port of that one process) and the floor's
echo server (``bench.py --serve-simulators 0 --serve-echo``).  With two CPUs or more the bridge has its CPU to
itself, shared only with the echo server (placement.py).  See docs/performance.md for why, how each figure is
measured, and the figures of the reference machine.

The pieces, one module each in bench/: common.py (what they share), processes.py (child processes),
sampling.py (CPU and memory from /proc), machine.py (the machine and its fsync cost), placement.py (which
CPUs the processes run on), simulators.py (the simulators' and the echo server's process), floor.py (the bare
TLS WebSocket echo of the floor), bridge_process.py (the measured bridge), clients.py (the load generator's
clients), measurement.py (the measuring phases), status_phase.py (the status page phase), report.py (the report
and its PASS/MISS judging), runner.py (one run, start to end).  This file is the command line.

Exit status: 0 when the benchmark ran (even if a target is missed: it is a report), 1 when it could not run
or the bridge misbehaved (a payment that did not end approved, a journal that does not match).
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from common import TERMINALS  # bench/ is sys.path[0]: this runs as a script


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark terminal-bridge against payments sent straight to a "
                                            "terminal (see docs/performance.md).")
    p.add_argument("--quick", action="store_true", help="a fast smoke run (a few seconds); figures not meaningful")
    p.add_argument("--payments", type=int, help="1-terminal payments each way (default 300; quick 20)")
    p.add_argument("--warmup", type=int, help="1-terminal warm-up payments each way (default 30; quick 3)")
    p.add_argument("--rounds", type=int, help=f"rounds of {TERMINALS} payments at once each way (default 20; quick 1)")
    p.add_argument("--duration", type=float, help="seconds of the throughput run (default 10; quick 1.5)")
    p.add_argument("--dir", help="where to put the bridge's state (default: a new temporary directory, removed "
                                 "afterwards); put it on the disk you want the journal's fsync measured on")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, journal)")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON to FILE")
    p.add_argument("--profile", metavar="FILE", help="run the measured bridge under cProfile and write its "
                   "stats to FILE (figures are then slower; read with python -m pstats FILE)")
    p.add_argument("--journal-payments", type=int, default=0, metavar="N",
                   help="start the bridge on a journal already holding N payments of 90 days (other clients' "
                        "than the benchmark's; bench/journal_growth.py builds it)")
    p.add_argument("--bridge-cgroup", metavar="DIR", help="run the bridge in this cgroup (bench/pi.py makes one "
                   "with a CPU quota)")
    p.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds of measuring")
    p.add_argument("--serve-simulators", type=int, metavar="N", help=argparse.SUPPRESS)
    p.add_argument("--serve-echo", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--poll-status-page", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    defaults = (20, 3, 1, 1.5) if args.quick else (300, 30, 20, 10.0)
    for name, default in zip(("payments", "warmup", "rounds", "duration"), defaults):
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.payments < 1 or args.rounds < 1 or args.warmup < 0 or args.duration <= 0:
        p.error("--payments and --rounds must be at least 1, --warmup at least 0, --duration above 0")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.serve_simulators is not None:
        from simulators import serve_simulators

        return serve_simulators(args.serve_simulators, echo=args.serve_echo)
    if args.poll_status_page:
        from status_phase import poll_status_page

        return poll_status_page(args.poll_status_page)
    from runner import run

    return run(args)


if __name__ == "__main__":
    sys.exit(main())
