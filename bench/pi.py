#!/usr/bin/env python3
"""`make bench-pi`: the benchmark with the bridge held to a quarter of one core, a stand-in for a Raspberry Pi 3.

Makes a cgroup with a CPU quota of 2.5 ms of CPU per 10 ms period (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``
under cgroup v1, ``cpu.max`` under v2; ``--period 100000`` gives the kernel's and systemd's 100 ms), runs
``bench.py --bridge-cgroup`` so that only the bridge runs in it (the measuring client and the simulators do not),
prints bench.py's whole report (its floor line and journal check included), then the Pi's targets with
PASS/MISS and how often the quota held the bridge back, and removes the cgroup.  Needs root (creating a
cgroup).  docs/performance.md says how close this stand-in is thought to be.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from typing import Any, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: 10 ms, not the kernel's 100 ms: a Pi is a slow CPU that never stops, and a quota with a long period lets the
#: bridge run at full speed for 25 ms, then stops it for up to 75 ms, which no slow CPU does (docs/performance.md,
#: "A Raspberry Pi's budget": the finer period is the nearer stand-in).
PERIOD_US = 10_000

TARGETS = {
    "added_p99_1": ("1 terminal, added latency p99", "ms", "<= 50 ms", lambda v: v <= 50.0),
    "throughput": ("throughput, payments per second", "/s", ">= 50/s", lambda v: v >= 50.0),
}


def make_cgroup(name: str, share: float, period: int = PERIOD_US) -> tuple[str, str]:
    """A cgroup limited to ``share`` of one core: (its directory, 'v1' or 'v2')."""
    v1 = "/sys/fs/cgroup/cpu"
    if os.path.exists(os.path.join(v1, "cpu.cfs_quota_us")):
        path = os.path.join(v1, name)
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "cpu.cfs_period_us"), "w") as f:
            f.write(str(period))
        with open(os.path.join(path, "cpu.cfs_quota_us"), "w") as f:
            f.write(str(int(period * share)))
        return path, "v1"
    v2 = "/sys/fs/cgroup"
    if os.path.exists(os.path.join(v2, "cgroup.controllers")):
        with open(os.path.join(v2, "cgroup.subtree_control"), "w") as f:
            f.write("+cpu")
        path = os.path.join(v2, name)
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "cpu.max"), "w") as f:
            f.write(f"{int(period * share)} {period}")
        return path, "v2"
    raise OSError("no cgroup CPU controller found under /sys/fs/cgroup")


def cpu_stat(path: str) -> dict[str, int]:
    with open(os.path.join(path, "cpu.stat")) as f:
        return {k: int(v) for k, v in (line.split() for line in f if line.strip())}


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--share", type=float, default=0.25, help="the bridge's CPU, in cores (default 0.25)")
    p.add_argument("--period", type=int, default=PERIOD_US, help="the quota's period in microseconds (default "
                   f"{PERIOD_US}; 100000 is the kernel's and systemd's CPUQuota='s); the bridge may use "
                   "its share of each period, then waits for the next")
    p.add_argument("bench_args", nargs="*", help="more arguments for bench.py (after --)")
    args = p.parse_args(argv)
    name = f"tb-bench-pi-{os.getpid()}"
    try:
        path, version = make_cgroup(name, args.share, args.period)
    except OSError as e:
        print(f"cannot make a cgroup with a CPU quota ({e}); this needs root", file=sys.stderr)
        return 1
    try:
        print(f"load average before: {os.getloadavg()[0]:.2f}; the bridge runs in {path} (cgroup {version}), "
              f"{args.share * 100:.0f} % of one core ({int(args.period * args.share)} us per {args.period} us)",
              flush=True)
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            done = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "bench.py"), "--bridge-cgroup", path,
                                   "--json", out.name, *args.bench_args])
            if done.returncode != 0:
                return done.returncode
            with open(out.name, encoding="utf-8") as f:
                figures: dict[str, Any] = json.load(f)["figures"]
        stat = cpu_stat(path)
        print(f"Raspberry Pi stand-in: the bridge held to {args.share * 100:.0f} % of one core (cgroup {version}, "
              f"period {args.period / 1000:g} ms)",
              flush=True)
        for key, (label, unit, target, check) in TARGETS.items():
            value = figures[key]
            shown = f"{value:.2f} ms" if unit == "ms" else f"{value:.0f}/s"
            print(f"  {label:40s} {shown:>12s}  {target:10s} {'PASS' if check(value) else 'MISS'}", flush=True)
        print(f"  1 terminal, added latency p50 {figures['added_p50_1']:.2f} ms; 50 terminals at once, added p99 "
              f"{figures['added_p99_50']:.2f} ms; start to ready {figures['ready_first']:.2f} / "
              f"{figures['ready_second']:.2f} s", flush=True)
        throttled = stat.get("nr_throttled", 0)
        periods = stat.get("nr_periods", 0)
        held = stat.get("throttled_time", stat.get("throttled_usec", 0) * 1000) / 1e9
        print(f"  the quota held the bridge back in {throttled} of {periods} periods of "
              f"{args.period / 1000:g} ms ({held:.1f} s in all)", flush=True)
        print(f"load average after: {os.getloadavg()[0]:.2f}", flush=True)
        return 0
    finally:
        try:
            os.rmdir(path)
        except OSError as e:
            print(f"could not remove {path}: {e}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
