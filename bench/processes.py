"""Starting and stopping the benchmark's child processes: a free port, a clean environment, the parent death
signal (no child outlives the benchmark), SIGTERM then SIGKILL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from typing import Optional

from common import ROOT


def free_port(*avoid: int) -> int:
    """A port of 127.0.0.1 free now, and none of ``avoid``: a port the benchmark's bridge listens on between its
    starts is free too, and the kernel may hand it out again."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in avoid:
            return port


#: The systemd unit the .deb installs: the benchmark's bridge runs with its ``Environment=`` settings.
UNIT = os.path.join(ROOT, "systemd", "terminal-bridge.service")


def unit_environment(path: str = UNIT) -> Optional[dict[str, str]]:
    """The variables the systemd unit's ``Environment=`` lines set (``NAME=value``, one per line, as the unit
    writes them), so that the measured bridge runs as the unit runs it (MALLOC_ARENA_MAX, docs/performance.md).
    None when there is no unit file beside bench/ (a copy of bench/ and tests/ without the source tree, as the
    .deb's build runs the tests): the bridge then runs without it, and the report says so."""
    env: dict[str, str] = {}
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("Environment="):
                for assignment in line[len("Environment="):].split():
                    name, _, value = assignment.partition("=")
                    env[name] = value
    return env


def set_parent_death_signal() -> None:
    """In a child, before exec: get SIGTERM if the benchmark dies, so no bridge outlives it."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def child_env(extra: Optional[dict[str, str]] = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM", "LISTEN_FDS")}
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra or {})
    return env


def stop_process(proc: Optional[subprocess.Popen], grace: float = 10.0) -> Optional[float]:
    """SIGTERM, wait up to ``grace`` s, then SIGKILL.  Returns the seconds it took to exit after SIGTERM."""
    if proc is None or proc.poll() is not None:
        return None
    if proc.stdin is not None:
        try:
            proc.stdin.close()
        except OSError:
            pass
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
        return time.perf_counter() - t0
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None
