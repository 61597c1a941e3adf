"""What a process costs, read from /proc while the benchmark runs: CPU seconds (of one process, of this
process, of the whole machine) and resident memory (VmRSS, VmHWM, RssAnon)."""

from __future__ import annotations

import os
import resource
from typing import Iterable

from common import BenchError


CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def system_cpu_seconds() -> tuple[float, float]:
    """(busy, stolen) CPU seconds of the whole machine so far, all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = values[:7]
    steal = values[7] if len(values) > 7 else 0
    return (user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def proc_status(pid: int, key: str) -> int:
    """A ``kB`` line of /proc/PID/status (VmRSS, VmHWM), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise BenchError(f"/proc/{pid}/status has no {key}")


def environment_of(pid: int, names: Iterable[str]) -> dict[str, str]:
    """Those of ``names`` set in the environment process ``pid`` started with (/proc/PID/environ)."""
    with open(f"/proc/{pid}/environ", "rb") as f:
        env = dict(item.decode("utf-8", "replace").partition("=")[::2] for item in f.read().split(b"\0") if item)
    return {name: env[name] for name in names if name in env}
