"""The real daemon (`python -m bridge -c CONFIG run`) as a child process, for the crash and durability tests."""

from __future__ import annotations

import os
import signal
import socket
import sys
from typing import Any, Optional, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
READY_LINE = b"Listening for clients"
FAULT_LINE = b"terminal-bridge fault: killed at "


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the daemon keeps one port across its restarts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DaemonProcess(ProcessProtocol):
    """One life of the daemon.  ``ready`` fires when it listens; ``ended`` fires with the exit status or the
    signal that ended it (as -SIGNAL); ``fault`` is the checkpoint it killed itself at, if any."""

    def __init__(self) -> None:
        self.ready: Deferred = Deferred()
        self.ended: Deferred = Deferred()
        self.output = bytearray()
        self.fault: Optional[str] = None
        self.status: Optional[int] = None

    @classmethod
    def spawn(cls, reactor: Any, config_path: str, fault: Optional[str] = None,
              prefix: Sequence[str] = ()) -> "DaemonProcess":
        """Start ``sys.executable -m bridge -c config_path run`` (after ``prefix``, e.g. an `unshare` line),
        with the fault-injection seam armed at ``fault`` if given."""
        env = {k: v for k, v in os.environ.items() if k not in ("TERMINAL_BRIDGE_FAULT", "JOURNAL_STREAM",
                                                                "NOTIFY_SOCKET", "WATCHDOG_USEC")}
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        env["PYTHONUNBUFFERED"] = "1"
        if fault:
            env["TERMINAL_BRIDGE_FAULT"] = fault
        process = cls()
        argv = [*prefix, sys.executable, "-m", "bridge", "-c", config_path, "run"]
        reactor.spawnProcess(process, argv[0], argv, env=env, path=REPO)
        return process

    @property
    def alive(self) -> bool:
        return not self.ended.called

    def outReceived(self, data: bytes) -> None:
        self._take(data)

    def errReceived(self, data: bytes) -> None:
        self._take(data)

    def _take(self, data: bytes) -> None:
        self.output += data
        if len(self.output) > 200_000:
            del self.output[:100_000]
        if not self.ready.called and READY_LINE in self.output:
            self.ready.callback(self)
        if self.fault is None and FAULT_LINE in self.output:
            tail = self.output[self.output.index(FAULT_LINE) + len(FAULT_LINE):]
            self.fault = tail.split(b"\n", 1)[0].decode()

    def processEnded(self, reason: Any) -> None:
        value = reason.value
        self.status = -value.signal if getattr(value, "signal", None) else getattr(value, "exitCode", None)
        if not self.ready.called:
            self.ready.errback(RuntimeError(f"the daemon ended ({self.status}) before it listened:\n"
                                            f"{self.tail()}"))
        self.ended.callback(self.status)

    def kill(self, sig: int = signal.SIGKILL) -> Deferred:
        """Send ``sig`` (SIGKILL by default); the Deferred fires once the process is gone."""
        if self.alive and self.transport.pid is not None:
            os.kill(self.transport.pid, sig)
        return self.ended

    def tail(self, size: int = 3000) -> str:
        return self.output[-size:].decode("utf-8", "replace")
