"""The measured bridge: its configuration (50 Caisse-AP TCP terminals, one client per terminal) and its
process (``python -m bridge -c CONFIG run``), timed from spawn to READY=1 on the sd_notify socket and to the first
accepted TCP connection, optionally in a cgroup (``--bridge-cgroup``, bench/pi.py's CPU quota)."""

from __future__ import annotations

import json
import os
import re
import select
import socket
import subprocess
import sys
import time
from typing import Optional

from common import BenchError
from processes import child_env, set_parent_death_signal, stop_process, unit_environment


#: ``--bridge-cgroup``: the cgroup directory the bridge runs in (bench/pi.py's CPU quota), or None.
BRIDGE_CGROUP: Optional[str] = None


#: The CPUs the bridge may use (placement.py: all the benchmark's, the bridge then keeps to the last), or None.
BRIDGE_CPUS: Optional[frozenset[int]] = None


def _bridge_preexec() -> None:
    """In the bridge's process, before exec: the parent death signal, its CPUs (the measuring process keeps to
    the others), and the cgroup if one was given (joined before the bridge runs a single instruction, so its start
    is under the quota too)."""
    set_parent_death_signal()
    if BRIDGE_CPUS is not None:
        os.sched_setaffinity(0, BRIDGE_CPUS)
    if BRIDGE_CGROUP:
        with open(os.path.join(BRIDGE_CGROUP, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))


def write_config(directory: str, listen_port: int, sim_ports: list[int]) -> str:
    from bridge.api.signing import new_secret
    from bridge.config import add_client

    lines = ["# written by bench/bench.py", "[bridge]", "name = bench", f"listen = 127.0.0.1:{listen_port}",
             "state_dir = state", "clients_file = clients.conf",
             # The per-connection limit (default 50 messages/s) is a policy against a runaway client; the
             # sequential 1-terminal run sends a few hundred a second on one connection, so it is raised here.
             "messages_per_second = 10000", ""]
    for index, port in enumerate(sim_ports):
        lines += [f"[terminal:t{index}]", "type = caisse-ap-tcp", f"address = 127.0.0.1:{port}", ""]
    path = os.path.join(directory, "bridge.conf")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    clients = []
    for index in range(len(sim_ports)):
        client = {"client_id": f"cl_bench_{index}", "secret_in": new_secret(), "secret_out": new_secret()}
        add_client(os.path.join(directory, "clients.conf"), f"pos-{index}", client["client_id"],
                   client["secret_in"], client["secret_out"], ("pay", "read"))
        clients.append(client)
    with open(os.path.join(directory, "clients.json"), "w", encoding="utf-8") as f:
        json.dump(clients, f)
    return path


class BridgeProcess:
    """``python -m bridge -c CONFIG run`` with NOTIFY_SOCKET pointing at a socket of ours, and the environment the
    systemd unit sets (``Environment=``: MALLOC_ARENA_MAX)."""

    def __init__(self, directory: str, config: str, port: int, name: str, profile: Optional[str] = None,
                 trace_imports: bool = False) -> None:
        self.directory, self.config, self.port, self.name = directory, config, port, name
        self.profile = profile
        #: Run Python with ``-X importtime``: every module the bridge imports, when it first imports it, is a
        #: line of its log (read back by :meth:`imported_modules`; the libraries-only baseline imports them).
        self.trace_imports = trace_imports
        self.proc: Optional[subprocess.Popen] = None
        self.log_path = os.path.join(directory, f"bridge-{name}.log")

    def start(self, timeout: float = 30.0) -> tuple[float, float]:
        """Spawn the bridge; return (seconds to READY=1, seconds to the first accepted TCP connection)."""
        notify_path = os.path.join(self.directory, f"notify-{self.name}.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(notify_path)
        sock.setblocking(False)
        log = open(self.log_path, "wb")
        try:
            t0 = time.perf_counter()
            python = [sys.executable] + (["-X", "importtime"] if self.trace_imports else []) \
                + (["-m", "cProfile", "-o", self.profile] if self.profile else [])
            self.proc = subprocess.Popen(python + ["-m", "bridge", "-c", self.config, "run"],
                                         cwd=self.directory, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT,
                                         env=child_env({**(unit_environment() or {}), "NOTIFY_SOCKET": notify_path}),
                                         preexec_fn=_bridge_preexec)
            ready = accepted = None
            while ready is None or accepted is None:
                now = time.perf_counter()
                if now - t0 > timeout:
                    raise BenchError(f"the bridge was not ready after {timeout} s")
                if self.proc.poll() is not None:
                    raise BenchError(f"the bridge exited with status {self.proc.returncode} while starting")
                if accepted is None:
                    try:
                        with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                            accepted = time.perf_counter() - t0
                    except OSError:
                        pass
                if ready is None:
                    readable, _, _ = select.select([sock], [], [], 0.002)
                    if readable:
                        message = sock.recv(4096).decode("utf-8", "replace")
                        if "READY=1" in message.split("\n"):
                            ready = time.perf_counter() - t0
            return ready, accepted
        finally:
            log.close()
            sock.close()
            os.unlink(notify_path)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> Optional[float]:
        return stop_process(self.proc, grace=15.0)

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def log_size(self) -> int:
        """Bytes of log written so far (what :meth:`imported_modules` reads up to)."""
        try:
            return os.path.getsize(self.log_path)
        except OSError:
            return 0

    def imported_modules(self, upto: Optional[int] = None) -> list[str]:
        """The modules the bridge imported (``trace_imports``) in its first ``upto`` bytes of log: ``-X
        importtime`` writes ``import time: self | cumulative | name`` to stderr, the log, at each first import."""
        with open(self.log_path, "rb") as f:
            text = f.read(upto if upto is not None else -1).decode("utf-8", "replace")
        return [line.rsplit("|", 1)[1].strip() for line in text.splitlines()
                if line.startswith("import time:") and line.count("|") == 2
                and not line.rstrip().endswith("imported package")]

    def log_problems(self) -> int:
        """Log events at warn level or above in the bridge's log (Twisted's text format: ``[namespace#level]``)."""
        count = 0
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    if re.search(r"#(warn|error|critical)\] ", line):
                        count += 1
        except OSError:
            pass
        return count
