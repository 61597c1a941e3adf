"""The machine the figures were measured on: CPU, memory, kernel, the versions of the libraries, the journal's
filesystem and what an fsync costs on it (part of the floor of the added latency, see report.py)."""

from __future__ import annotations

import os
import platform
import sqlite3
import time
from typing import Any, Optional

from common import percentile


def machine(directory: str) -> dict[str, Any]:
    import autobahn
    import twisted

    info: dict[str, Any] = {"nproc": len(os.sched_getaffinity(0)), "cpus": os.cpu_count()}
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Model", "Hardware")):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info["cpu"] = model
    with open("/proc/meminfo") as f:
        info["memory_mib"] = int(f.readline().split()[1]) // 1024
    info["kernel"] = platform.release()
    info["python"] = platform.python_version()
    info["twisted"] = twisted.__version__
    info["autobahn"] = autobahn.__version__
    try:
        import cryptography

        info["cryptography"] = cryptography.__version__
    except ImportError:
        pass
    import ssl

    info["openssl"] = ssl.OPENSSL_VERSION
    info["sqlite"] = sqlite3.sqlite_version
    info["filesystem"] = _filesystem_of(directory)
    info["fsync_p50_ms"], info["fsync_p99_ms"] = _fsync_cost(directory)
    info["probe_p50_ms"], info["probe_p99_ms"] = _probe_cost(directory)
    return info


def _filesystem_of(path: str) -> str:
    best, found = "", "unknown"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                device, mount, fstype = line.split()[:3]
                if (path == mount or path.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
                    best, found = mount, f"{fstype} on {device} (mounted at {mount})"
    except OSError:
        pass
    return found


class FsyncProbe:
    """A journal write at its cheapest, one sample at a time: 4 KiB written in place into a file whose blocks are
    already allocated, then ``fdatasync`` (as SQLite's WAL is written once it has grown: no size or block changes,
    so the filesystem has no metadata to commit).  The floor's fsync (report.py), sampled between the 1-terminal
    payments (measurement.py) and apart, before the bridge starts (``machine``)."""

    BLOCKS = 64

    def __init__(self, directory: str, cpus: Optional[frozenset[int]] = None) -> None:
        #: Where each sample's fdatasync runs (the bridge's CPU, where its journal's writer runs), then back.
        self._cpus = cpus
        self.path = os.path.join(directory, "fsync-probe")
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self._block = os.urandom(4096)
        self._next = 0
        for i in range(self.BLOCKS):
            os.pwrite(self._fd, self._block, i * 4096)
        os.fsync(self._fd)  # size and blocks on disk before the first sample

    def sample(self) -> float:
        """Write one block in place and fdatasync: the flush's time in ms."""
        home = os.sched_getaffinity(0) if self._cpus is not None else None
        if self._cpus is not None:
            os.sched_setaffinity(0, self._cpus)
        try:
            os.pwrite(self._fd, self._block, self._next * 4096)
            self._next = (self._next + 1) % self.BLOCKS
            t0 = time.perf_counter()
            os.fdatasync(self._fd)
            return (time.perf_counter() - t0) * 1000
        finally:
            if home is not None:
                os.sched_setaffinity(0, home)

    def close(self) -> None:
        os.close(self._fd)
        os.unlink(self.path)


def _probe_cost(directory: str, count: int = 200) -> tuple[float, float]:
    """:class:`FsyncProbe` ``count`` times in the journal's directory: p50 and p99 in ms."""
    probe = FsyncProbe(directory)
    try:
        times = [probe.sample() for _ in range(count)]
    finally:
        probe.close()
    return percentile(times, 50), percentile(times, 99)


def _fsync_cost(directory: str, count: int = 200) -> tuple[float, float]:
    """Append 4 KiB and fsync, ``count`` times, in the directory the journal lives in: p50 and p99 in ms (the
    floor's fsync until the twelfth session, shown beside the floor for comparison)."""
    path = os.path.join(directory, "fsync-append-probe")
    times = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        block = os.urandom(4096)
        for _ in range(count):
            os.write(fd, block)
            t0 = time.perf_counter()
            os.fsync(fd)
            times.append((time.perf_counter() - t0) * 1000)
    finally:
        os.close(fd)
        os.unlink(path)
    return percentile(times, 50), percentile(times, 99)
