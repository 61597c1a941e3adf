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

Three processes take part, all on 127.0.0.1: this one (the measuring client: the WebSocket clients and the
direct TCP baseline), the bridge (``python -m bridge -c CONFIG run``, the real daemon with its real journal),
and the simulators (``bench.py --serve-simulators N``, every terminal a port of that one process).  See
docs/performance.md for why, how each figure is measured, and the figures of the reference machine.

Exit status: 0 when the benchmark ran (even if a target is missed: it is a report), 1 when it could not run
or the bridge misbehaved (a payment that did not end approved, a journal that does not match).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import resource
import select
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any, Callable, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

TERMINALS = 50
AMOUNT, CURRENCY = 1234, "EUR"
CLK_TCK = os.sysconf("SC_CLK_TCK")

#: key -> (target text, check(value, figures)) for the figures that have a target (issue 18's, stated against the
#: floor this run measures: ``floor_ms``, see report()).  Values are in ms, payments/s, s.  Resident memory's
#: target is against the libraries-only process of the same run (printed after the table, see main()).
TARGETS: dict[str, tuple[str, Callable[[float, dict[str, Any]], bool]]] = {
    "added_p50_1": ("<= floor + 1.0 ms", lambda v, r: v <= r["floor_ms"] + 1.0),
    "added_p99_1": ("<= floor + 2.5 ms", lambda v, r: v <= r["floor_ms"] + 2.5),
    "added_p99_50": ("<= 50 ms", lambda v, r: v <= 50.0),
    "throughput": (">= 300/s", lambda v, r: v >= 300.0),
    "ready_first": ("<= 1 s", lambda v, r: v <= 1.0),
    "ready_second": ("<= 1 s", lambda v, r: v <= 1.0),
}


class BenchError(Exception):
    """The benchmark could not run, or what it measured cannot be trusted."""


# -- small helpers ------------------------------------------------------------------------------------------


def percentile(samples: list[float], p: float) -> float:
    """Nearest-rank percentile: the smallest sample with at least p % of the samples at or below it."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[rank - 1]


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _set_parent_death_signal() -> None:
    """In a child, before exec: get SIGTERM if the benchmark dies, so no bridge outlives it."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


#: ``--bridge-cgroup``: the cgroup directory the bridge runs in (bench/pi.py's CPU quota), or None.
BRIDGE_CGROUP: Optional[str] = None


def _bridge_preexec() -> None:
    """In the bridge's process, before exec: the parent death signal, and the cgroup if one was given (joined
    before the bridge runs a single instruction, so its start is under the quota too)."""
    _set_parent_death_signal()
    if BRIDGE_CGROUP:
        with open(os.path.join(BRIDGE_CGROUP, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))


def child_env(extra: Optional[dict[str, str]] = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM", "LISTEN_FDS")}
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra or {})
    return env


# -- the machine --------------------------------------------------------------------------------------------


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


def _fsync_cost(directory: str, count: int = 200) -> tuple[float, float]:
    """Append 4 KiB and fsync, ``count`` times, in the directory the journal lives in: p50 and p99 in ms."""
    path = os.path.join(directory, "fsync-probe")
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


# -- the simulators' process --------------------------------------------------------------------------------


def serve_simulators(count: int) -> int:
    """``--serve-simulators N``: N Caisse-AP simulators answering at once; print their ports; exit on stdin EOF."""
    from twisted.internet import reactor, stdio
    from twisted.internet.defer import inlineCallbacks
    from twisted.internet.endpoints import TCP4ServerEndpoint
    from twisted.internet.protocol import Protocol
    from twisted.logger import globalLogBeginner

    from bridge.terminals.caisse_ap.simulator import SimulatorFactory, SimulatorScript

    # The simulators log every answer; nobody reads those lines here.
    globalLogBeginner.beginLoggingTo([lambda event: None], redirectStandardIO=False)

    class Parent(Protocol):
        def connectionLost(self, reason: Any = None) -> None:
            if reactor.running:
                reactor.stop()

    @inlineCallbacks
    def start():
        ports = []
        for _ in range(count):
            factory = SimulatorFactory(reactor, SimulatorScript())  # approve, delay 0, close after answering
            port = yield TCP4ServerEndpoint(reactor, 0, backlog=128, interface="127.0.0.1").listen(factory)
            ports.append(port.getHost().port)
        echo_port = yield listen_echo(reactor, echo_dir)
        stdio_proto.transport.write((json.dumps({"ports": ports, "echo_port": echo_port}) + "\n").encode())

    echo_dir = tempfile.mkdtemp(prefix="tb-bench-echo-")
    reactor.addSystemEventTrigger("after", "shutdown", shutil.rmtree, echo_dir, True)

    stdio_proto = Parent()
    stdio.StandardIO(stdio_proto)
    reactor.callWhenRunning(start)
    reactor.run()
    return 0


def listen_echo(reactor: Any, directory: str):
    """The floor of the added latency: a bare autobahn WebSocket over TLS, with the bridge's TLS settings and
    WebSocket options, that sends every message back and does nothing else (no JSON, no signature, no journal).
    Fires with its port."""
    from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
    from twisted.internet.endpoints import SSL4ServerEndpoint

    from bridge.api.tls import ensure_certificate, server_options

    cert, key = os.path.join(directory, "echo.crt"), os.path.join(directory, "echo.key")
    ensure_certificate(cert, key, "localhost")

    class Echo(WebSocketServerProtocol):
        def connectionMade(self) -> None:
            self.transport.setTcpNoDelay(True)  # as the bridge does (docs/performance.md: Nagle)
            super().connectionMade()

        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            self.sendMessage(payload, isBinary)

    factory = WebSocketServerFactory()
    factory.protocol = Echo
    factory.setProtocolOptions(utf8validateIncoming=False, perMessageCompressionAccept=lambda offers: None)
    endpoint = SSL4ServerEndpoint(reactor, 0, server_options(cert, key), interface="127.0.0.1")
    return endpoint.listen(factory).addCallback(lambda port: port.getHost().port)


def echo_client(reactor: Any, port: int):
    """Open a WebSocket over TLS to the echo server; fires with a function sending one message and firing with
    the seconds until it came back."""
    from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
    from twisted.internet.defer import Deferred
    from twisted.internet.endpoints import SSL4ClientEndpoint
    from twisted.internet.ssl import CertificateOptions

    opened: Deferred = Deferred()

    class Client(WebSocketClientProtocol):
        waiting: Optional[tuple[float, Deferred]] = None

        def connectionMade(self) -> None:
            self.transport.setTcpNoDelay(True)
            super().connectionMade()

        def onOpen(self) -> None:
            opened.callback(self)

        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            assert self.waiting is not None
            (t0, d), self.waiting = self.waiting, None
            d.callback(time.perf_counter() - t0)

        def echo(self, message: bytes) -> Deferred:
            d: Deferred = Deferred()
            self.waiting = (time.perf_counter(), d)
            self.sendMessage(message)
            return d

    factory = WebSocketClientFactory(f"wss://127.0.0.1:{port}")
    factory.protocol = Client
    factory.setProtocolOptions(perMessageCompressionOffers=[])
    endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", port, CertificateOptions(verify=False), timeout=10)
    endpoint.connect(factory).addErrback(lambda f: opened.errback(f) if not opened.called else None)
    return opened


def start_simulators(count: int, timeout: float = 20.0) -> tuple[subprocess.Popen, list[int], int]:
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve-simulators", str(count)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=child_env(),
                            preexec_fn=_set_parent_death_signal)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else b""
    if not line:
        stop_process(proc)
        raise BenchError("the simulators did not start")
    announced = json.loads(line)
    ports = announced["ports"]
    if len(ports) != count:
        raise BenchError("the simulators reported the wrong number of ports")
    return proc, ports, announced["echo_port"]


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


# -- the bridge's process -----------------------------------------------------------------------------------


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
    """``python -m bridge -c CONFIG run`` with NOTIFY_SOCKET pointing at a socket of ours."""

    def __init__(self, directory: str, config: str, port: int, name: str, profile: Optional[str] = None) -> None:
        self.directory, self.config, self.port, self.name = directory, config, port, name
        self.profile = profile
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
            python = [sys.executable] + (["-m", "cProfile", "-o", self.profile] if self.profile else [])
            self.proc = subprocess.Popen(python + ["-m", "bridge", "-c", self.config, "run"],
                                         cwd=self.directory, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=child_env({"NOTIFY_SOCKET": notify_path}),
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


# -- the measuring client (in this process, on its own reactor) ---------------------------------------------


class BridgeClient:
    """One POS: a TLS WebSocket kept open, hello once, one payment at a time on its terminal."""

    def __init__(self, proto: Any, factory: Any, terminal: str) -> None:
        from twisted.internet.defer import Deferred  # noqa: F401

        self.proto, self.terminal = proto, terminal
        self._waiting: dict[str, Any] = {}
        factory.on_event = self._on_event

    def _on_event(self, event: dict[str, Any]) -> None:
        payment = event.get("payment") or {}
        if not payment.get("final"):
            return
        waiter = self._waiting.pop(payment.get("command_id"), None)
        if waiter is not None:
            waiter.callback((time.perf_counter(), payment["state"], event["seq"]))

    def pay(self):
        """Start a payment; fires with (seconds from sending payment.start to the final event, final state)."""
        from twisted.internet.defer import Deferred

        command_id = uuid.uuid4().hex
        final: Deferred = Deferred()
        self._waiting[command_id] = final
        t0 = time.perf_counter()
        reply = self.proto.call("payment.start", {"terminal": self.terminal, "amount": AMOUNT,
                                                  "currency": CURRENCY, "kind": "debit", "method": "card"},
                                message_id=command_id)

        def refused(failure: Any) -> None:
            waiter = self._waiting.pop(command_id, None)
            if waiter is not None:
                waiter.errback(failure)

        reply.addErrback(refused)

        def ended(result: Any) -> tuple[float, str]:
            t1, state, seq = result
            # Acknowledge like a real client (cumulative: the final event covers the two before it); the
            # clock has already stopped, but the bridge journals the ack while the next payment runs.
            self.proto.call("events.ack", {"seq": seq}).addErrback(lambda f: None)
            return t1 - t0, state

        return final.addCallback(ended)


def direct_payment(reactor: Any, port: int, payload: bytes):
    """The same payment straight to the simulator: connect, write, read until the answer parses whole and the
    terminal closes (the driver's end-of-answer path when the terminal closes), close.  Fires with (seconds,
    AE code)."""
    from twisted.internet.defer import Deferred
    from twisted.internet.endpoints import TCP4ClientEndpoint
    from twisted.internet.protocol import Factory, Protocol

    from bridge.terminals.caisse_ap.codec import AnswerParser, MalformedAnswer

    done: Deferred = Deferred()
    t0 = time.perf_counter()

    class Reader(Protocol):
        def connectionMade(self) -> None:
            self.parser = AnswerParser()
            self.bad: Optional[str] = None
            self.transport.write(payload)

        def dataReceived(self, data: bytes) -> None:
            try:
                self.parser.feed(data)
            except MalformedAnswer as error:
                self.bad = error.reason
                self.transport.loseConnection()

        def connectionLost(self, reason: Any = None) -> None:
            elapsed = time.perf_counter() - t0
            if self.bad is None and self.parser.complete:
                done.callback((elapsed, self.parser.as_dict().get("AE", "")))
            else:
                done.errback(BenchError(f"direct payment: no whole answer ({self.bad or 'link closed early'})"))

    class OneReader(Factory):
        noisy = False

        def buildProtocol(self, addr: Any) -> Reader:
            return Reader()

    connecting = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=10).connect(OneReader())
    connecting.addErrback(lambda f: done.errback(f) if not done.called else None)
    return done


class Measurement:
    """Runs the phases against a running bridge; fills ``results``."""

    def __init__(self, reactor: Any, args: argparse.Namespace, url: str, fingerprint: str,
                 clients: list[dict[str, str]], sim_ports: list[int], bridge_pid: int, sim_pid: int,
                 echo_port: int) -> None:
        self.reactor, self.args, self.url, self.fingerprint = reactor, args, url, fingerprint
        self.credentials = clients
        self.sim_ports, self.bridge_pid, self.sim_pid = sim_ports, bridge_pid, sim_pid
        self.echo_port = echo_port
        self.clients: list[BridgeClient] = []
        self.results: dict[str, Any] = {}
        self.bridge_payments = 0
        self.not_approved: list[str] = []
        from bridge.core.money import currency
        from bridge.core.contract import CARD, DEBIT, PaymentRequest
        from bridge.terminals.caisse_ap.codec import encode_request

        self.payload = encode_request(PaymentRequest(payment_id="bench", kind=DEBIT, amount=AMOUNT,
                                                     currency=currency(CURRENCY), method=CARD))

    def progress(self, text: str) -> None:
        print(f"  .. {text}", file=sys.stderr, flush=True)

    def run(self):
        from twisted.internet.defer import inlineCallbacks

        @inlineCallbacks
        def phases():
            yield self.connect_all()
            yield self.one_terminal()
            yield self.floor()
            yield self.many_terminals()
            yield self.throughput()
            self.results["rss"] = proc_status(self.bridge_pid, "VmRSS")
            self.results["rss_peak"] = proc_status(self.bridge_pid, "VmHWM")
            self.results["rss_anon"] = proc_status(self.bridge_pid, "RssAnon")
            if os.environ.get("BENCH_SMAPS"):
                shutil.copy(f"/proc/{self.bridge_pid}/smaps", os.environ["BENCH_SMAPS"])
            yield self.close_all()

        return phases()

    def connect_all(self):
        from twisted.internet.defer import gatherResults, inlineCallbacks

        from bridge.api.client import Credentials, connect

        @inlineCallbacks
        def one(index: int):
            c = self.credentials[index]
            creds = Credentials(c["client_id"], c["secret_in"], c["secret_out"])
            factory, opened = connect(self.reactor, self.url, creds, fingerprint=self.fingerprint)
            proto = yield opened
            yield proto.call("hello", {"client": creds.client_id})
            return BridgeClient(proto, factory, f"t{index}")

        self.progress(f"connecting {len(self.sim_ports)} clients")
        d = gatherResults([one(i) for i in range(len(self.sim_ports))], consumeErrors=True)
        return d.addCallback(lambda clients: self.clients.extend(clients))

    def close_all(self):
        for client in self.clients:
            client.proto.sendClose()
        from twisted.internet.task import deferLater

        return deferLater(self.reactor, 0.2, lambda: None)

    def _check(self, state: str, what: str) -> None:
        if state not in ("approved", "10"):
            self.not_approved.append(f"{what}: {state}")

    def _bridge(self, client: BridgeClient):
        def counted(result):
            self.bridge_payments += 1
            self._check(result[1], "bridge")
            return result[0] * 1000

        return client.pay().addCallback(counted)

    def _direct(self, index: int):
        def checked(result):
            self._check(result[1], "direct")
            return result[0] * 1000

        return direct_payment(self.reactor, self.sim_ports[index], self.payload).addCallback(checked)

    def one_terminal(self):
        """Payments one after the other on terminal t0, alternating direct and through the bridge."""
        from twisted.internet.defer import inlineCallbacks

        @inlineCallbacks
        def run():
            client = self.clients[0]
            self.progress(f"1 terminal: {self.args.warmup} warm-up + {self.args.payments} payments each way")
            for _ in range(self.args.warmup):
                yield self._direct(0)
                yield self._bridge(client)
            direct, bridged = [], []
            cpu0 = proc_cpu_seconds(self.bridge_pid)
            for _ in range(self.args.payments):
                direct.append((yield self._direct(0)))
                bridged.append((yield self._bridge(client)))
            cpu = proc_cpu_seconds(self.bridge_pid) - cpu0
            self._latencies("1", direct, bridged)
            self.results["bridge_cpu_ms_per_payment_1"] = cpu * 1000 / len(bridged)

        return run()

    def floor(self):
        """Round trips of a message the size of a payment's over a bare TLS WebSocket (autobahn, no bridge code):
        the part of the added latency this stack costs on this machine before the bridge does anything."""
        from twisted.internet.defer import inlineCallbacks

        @inlineCallbacks
        def run():
            count = self.args.payments if self.args.quick else max(self.args.payments, 1000)
            self.progress(f"floor: {self.args.warmup} warm-up + {count} round trips over a bare TLS WebSocket")
            client = yield echo_client(self.reactor, self.echo_port)
            message = json.dumps({"id": str(uuid.uuid4()), "op": "payment.start", "args": {"x": "x" * 280}}).encode()
            samples = []
            for _ in range(self.args.warmup):
                yield client.echo(message)
            cpu0 = proc_cpu_seconds(self.sim_pid)  # the simulators' process is otherwise idle meanwhile
            # more round trips than payments: the CPU figure is counted in ticks of 10 ms
            for _ in range(count):
                elapsed = yield client.echo(message)
                samples.append(elapsed * 1000)
            cpu = proc_cpu_seconds(self.sim_pid) - cpu0
            client.sendClose()
            self.results["echo_p50"] = percentile(samples, 50)
            self.results["echo_p99"] = percentile(samples, 99)
            self.results["echo_bytes"] = len(message)
            self.results["echo_n"] = len(samples)
            self.results["echo_server_cpu_ms"] = cpu * 1000 / len(samples)

        return run()

    def many_terminals(self):
        """All terminals pay at once, round after round: a direct round, then a round through the bridge."""
        from twisted.internet.defer import gatherResults, inlineCallbacks

        @inlineCallbacks
        def run():
            n = len(self.clients)
            self.progress(f"{n} terminals at once: 1 warm-up + {self.args.rounds} rounds each way")
            direct, bridged = [], []
            for round_ in range(self.args.rounds + 1):
                d = yield gatherResults([self._direct(i) for i in range(n)], consumeErrors=True)
                b = yield gatherResults([self._bridge(c) for c in self.clients], consumeErrors=True)
                if round_:  # the first round warms up
                    direct += d
                    bridged += b
            self._latencies(str(n), direct, bridged)

        return run()

    def _latencies(self, suffix: str, direct: list[float], bridged: list[float]) -> None:
        r = self.results
        for name, samples in (("direct", direct), ("bridge", bridged)):
            r[f"{name}_p50_{suffix}"] = percentile(samples, 50)
            r[f"{name}_p99_{suffix}"] = percentile(samples, 99)
            r[f"{name}_max_{suffix}"] = max(samples)
            r[f"{name}_n_{suffix}"] = len(samples)
        r[f"added_p50_{suffix}"] = r[f"bridge_p50_{suffix}"] - r[f"direct_p50_{suffix}"]
        r[f"added_p99_{suffix}"] = r[f"bridge_p99_{suffix}"] - r[f"direct_p99_{suffix}"]

    def throughput(self):
        """Every terminal starts its next payment as soon as the previous one ends, for a fixed time."""
        from twisted.internet.defer import gatherResults, inlineCallbacks

        latencies: list[float] = []

        @inlineCallbacks
        def loop(client: BridgeClient, deadline: float):
            while time.perf_counter() < deadline:
                latencies.append((yield self._bridge(client)))
            return time.perf_counter()

        @inlineCallbacks
        def run():
            n = len(self.clients)
            self.progress(f"throughput: {n} terminals kept busy for {self.args.duration:g} s")
            cpu_bridge0, cpu_sim0, cpu_self0 = (proc_cpu_seconds(self.bridge_pid),
                                                proc_cpu_seconds(self.sim_pid), self_cpu_seconds())
            t0 = time.perf_counter()
            ends = yield gatherResults([loop(c, t0 + self.args.duration) for c in self.clients],
                                       consumeErrors=True)
            elapsed = max(ends) - t0
            r = self.results
            r["throughput"] = len(latencies) / elapsed
            r["throughput_payments"] = len(latencies)
            r["throughput_seconds"] = elapsed
            r["throughput_p50"] = percentile(latencies, 50)
            r["throughput_p99"] = percentile(latencies, 99)
            cpu_bridge = proc_cpu_seconds(self.bridge_pid) - cpu_bridge0
            r["cpu_bridge_pct"] = 100 * cpu_bridge / elapsed
            r["cpu_sim_pct"] = 100 * (proc_cpu_seconds(self.sim_pid) - cpu_sim0) / elapsed
            r["cpu_client_pct"] = 100 * (self_cpu_seconds() - cpu_self0) / elapsed
            r["bridge_cpu_ms_per_payment"] = 1000 * cpu_bridge / len(latencies)

        return run()


def measure(args: argparse.Namespace, url: str, fingerprint: str, clients: list[dict[str, str]],
            sim_ports: list[int], bridge_pid: int, sim_pid: int,
            echo_port: int) -> tuple[dict[str, Any], int, list[str]]:
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner

    # The client library logs through Twisted; keep errors only, on stderr.
    def observer(event: dict[str, Any]) -> None:
        if event.get("log_level") is not None and event["log_level"].name in ("error", "critical"):
            from twisted.logger import formatEvent

            print("client: " + formatEvent(event), file=sys.stderr)
            if event.get("log_failure") is not None:
                print(event["log_failure"].getTraceback(), file=sys.stderr)

    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    m = Measurement(reactor, args, url, fingerprint, clients, sim_ports, bridge_pid, sim_pid, echo_port)
    outcome: dict[str, Any] = {}

    def finished(result: Any) -> None:
        outcome["failure"] = result if hasattr(result, "getErrorMessage") else None
        if reactor.running:
            reactor.stop()

    def start() -> None:
        d = m.run()
        d.addTimeout(args.timeout, reactor)
        d.addBoth(finished)

    reactor.callWhenRunning(start)
    reactor.run()
    failure = outcome.get("failure", "interrupted")
    if failure is not None:
        if failure == "interrupted":
            raise KeyboardInterrupt
        if hasattr(failure.value, "subFailure"):  # FirstError from gatherResults
            failure = failure.value.subFailure
        raise BenchError(f"measuring failed: {failure.getErrorMessage() or failure.type.__name__}")
    return m.results, m.bridge_payments, m.not_approved


# -- the status page phase (issue #16): payments with the page closed, then open and refreshing -------------
#
# A third start of the bridge, with its [status] section on: payments one after the other on terminal t0, in
# windows where nobody looks at the page and windows where another process (``--poll-status-page``, paused with
# SIGSTOP in between) keeps it open the way many browsers would, fetching its refreshing part every
# STATUS_PAGE_INTERVAL s and /metrics every STATUS_SCRAPE_INTERVAL s.  The measuring client is a blocking one
# (websocket-client) because the reactor of this process cannot be run twice; both kinds of window use it, so
# they compare with each other, not with the figures above.

#: As 20 browsers showing the page (each refreshes every 5 s), and a Prometheus scraping every second.
STATUS_PAGE_INTERVAL = 0.25
STATUS_SCRAPE_INTERVAL = 1.0
#: Closed and open windows, in turn, over --duration seconds each way.
STATUS_WINDOWS = 5
STATUS_PASSWORD = "bench status page password"


class BlockingBridgeClient:
    """One signed WebSocket client without a reactor: hello, then one payment at a time."""

    def __init__(self, url: str, client: dict[str, str], cafile: str) -> None:
        import ssl

        import websocket

        from bridge.api.session import SUBPROTOCOL

        self.client = client
        self.ws = websocket.create_connection(url, subprotocols=[SUBPROTOCOL], timeout=30,
                                              sslopt={"ca_certs": cafile, "cert_reqs": ssl.CERT_REQUIRED,
                                                      "check_hostname": False})
        self.call("hello", {"client": client["client_id"]})

    def send(self, op: str, args: dict[str, Any], message_id: Optional[str] = None) -> str:
        from bridge.api import signing

        message_id = message_id or uuid.uuid4().hex
        message = {"id": message_id, "op": op, "ts": int(time.time()), "args": args}
        self.ws.send(signing.signed_bytes(message, self.client["secret_in"]).decode())
        return message_id

    def call(self, op: str, args: dict[str, Any]) -> Any:
        message_id = self.send(op, args)
        while True:
            message = json.loads(self.ws.recv())
            if message.get("re") == message_id:
                if not message.get("ok"):
                    raise BenchError(f"{op} refused: {message.get('error')}")
                return message.get("result")

    def pay(self, terminal: str) -> tuple[float, str]:
        """(seconds from sending payment.start to its final event, final state)."""
        t0 = time.perf_counter()
        command_id = self.send("payment.start", {"terminal": terminal, "amount": AMOUNT, "currency": CURRENCY})
        while True:
            message = json.loads(self.ws.recv())
            payment = message.get("payment") or {}
            if payment.get("command_id") == command_id and payment.get("final"):
                elapsed = time.perf_counter() - t0
                self.send("events.ack", {"seq": message["seq"]})
                return elapsed, payment["state"]
            if message.get("re") == command_id and not message.get("ok"):
                raise BenchError(f"payment.start refused: {message.get('error')}")

    def close(self) -> None:
        self.ws.close()


def poll_status_page(port: int) -> int:
    """``--poll-status-page PORT``: sign in, then fetch the page's refreshing part and /metrics until SIGTERM;
    print what it fetched and how long each took, as JSON."""
    import http.client
    import ssl
    import urllib.parse

    stop = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(True))
    context = ssl.create_default_context(cafile=os.environ["TB_BENCH_CAFILE"])
    context.check_hostname = False
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
    conn.request("POST", "/login", body=urllib.parse.urlencode({"password": STATUS_PASSWORD}),
                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    response = conn.getresponse()
    response.read()
    cookie = (response.getheader("Set-Cookie") or "").split(";", 1)[0]
    if response.status != 303 or not cookie:
        print(json.dumps({"error": f"sign-in answered {response.status}"}), flush=True)
        return 1
    print("signed in", flush=True)
    pages: list[float] = []
    scrapes: list[float] = []
    errors = 0
    next_page = next_scrape = time.perf_counter()
    while not stop:
        now = time.perf_counter()
        # after a pause (SIGSTOP: the page "closed"), start again at the normal pace rather than in a burst
        next_page = max(next_page, now - STATUS_PAGE_INTERVAL)
        next_scrape = max(next_scrape, now - STATUS_SCRAPE_INTERVAL)
        if now >= next_scrape:
            path, headers, samples = "/metrics", {"Authorization": "Bearer " + os.environ["TB_BENCH_TOKEN"]}, scrapes
            next_scrape += STATUS_SCRAPE_INTERVAL
        elif now >= next_page:
            path, headers, samples = "/fragment", {"Cookie": cookie}, pages
            next_page += STATUS_PAGE_INTERVAL
        else:
            time.sleep(min(next_page, next_scrape) - now)
            continue
        t0 = time.perf_counter()
        try:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                errors += 1
        except (OSError, http.client.HTTPException):
            if stop:
                break
            errors += 1
            conn.close()
            continue
        samples.append(time.perf_counter() - t0)
    conn.close()
    print(json.dumps({"pages": pages, "scrapes": scrapes, "errors": errors}), flush=True)
    return 0


def status_phase(args: argparse.Namespace, directory: str, config: str, port: int, client: dict[str, str],
                 bridges: list["BridgeProcess"]) -> tuple[dict[str, Any], int]:
    """Returns the figures and the number of payments made."""
    from bridge.status.auth import write_password_file

    status_port, token = free_port(), uuid.uuid4().hex + uuid.uuid4().hex
    with open(config, "a", encoding="utf-8") as f:
        f.write(f"\n[status]\nlisten = 127.0.0.1:{status_port}\nmetrics_token = {token}\n")
    write_password_file(os.path.join(directory, "state", "status-page.password"), STATUS_PASSWORD)
    print("  .. status page: third start of the bridge, with [status] on", file=sys.stderr, flush=True)
    bridge = BridgeProcess(directory, config, port, "status")
    bridges.append(bridge)
    bridge.start()
    r: dict[str, Any] = {"status_rss_ready": proc_status(bridge.pid, "VmRSS")}
    cafile = os.path.join(directory, "state", "tls", "bridge.crt")
    payer = BlockingBridgeClient(f"wss://127.0.0.1:{port}", client, cafile)
    poller: Optional[subprocess.Popen] = None
    made = 0
    try:
        def window(seconds: float, samples: Optional[list[float]]) -> int:
            """Payments one after the other for ``seconds``; returns how many."""
            nonlocal made
            count, deadline = 0, time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                elapsed, state = payer.pay("t0")
                made += 1
                count += 1
                if state != "approved":
                    raise BenchError(f"status page phase: a payment ended {state}")
                if samples is not None:
                    samples.append(elapsed * 1000)
            return count

        poller = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--poll-status-page", str(status_port)],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
                                  env=child_env({"TB_BENCH_CAFILE": cafile, "TB_BENCH_TOKEN": token}),
                                  preexec_fn=_set_parent_death_signal)
        assert poller.stdout is not None
        if poller.stdout.readline().strip() != "signed in":
            raise BenchError("status page phase: the poller could not sign in")
        poller.send_signal(signal.SIGSTOP)  # the page is closed until a window opens it
        for _ in range(args.warmup):
            payer.pay("t0")
            made += 1
        # Closed and open alternate in short windows, so that the rest of the machine's load falls on both alike.
        print(f"  .. status page closed, then open (refreshed every {STATUS_PAGE_INTERVAL:g} s, scraped every "
              f"{STATUS_SCRAPE_INTERVAL:g} s), in turn: {STATUS_WINDOWS} windows of {args.duration / STATUS_WINDOWS:g} "
              f"s each", file=sys.stderr, flush=True)
        samples: dict[str, list[float]] = {"closed": [], "open": []}
        cpu = {"closed": 0.0, "open": 0.0}
        seconds = {"closed": 0.0, "open": 0.0}
        counts = {"closed": 0, "open": 0}
        for _ in range(STATUS_WINDOWS):
            for key in ("closed", "open"):
                poller.send_signal(signal.SIGCONT if key == "open" else signal.SIGSTOP)
                cpu0, t0 = proc_cpu_seconds(bridge.pid), time.perf_counter()
                counts[key] += window(args.duration / STATUS_WINDOWS, samples[key])
                seconds[key] += time.perf_counter() - t0
                cpu[key] += proc_cpu_seconds(bridge.pid) - cpu0
        poller.send_signal(signal.SIGCONT)
        poller.send_signal(signal.SIGTERM)
        out, _ = poller.communicate(timeout=30)
        polled = json.loads(out.strip().splitlines()[-1])
        if polled.get("error") or polled["errors"]:
            raise BenchError(f"status page phase: the page did not answer every fetch: {polled.get('error')}"
                             f" ({polled.get('errors')} failed)")
        for key in ("closed", "open"):
            r[f"status_{key}_p50"] = percentile(samples[key], 50)
            r[f"status_{key}_p99"] = percentile(samples[key], 99)
            r[f"status_{key}_n"] = len(samples[key])
            r[f"status_{key}_cpu_pct"] = 100 * cpu[key] / seconds[key]
        r["status_pages"], r["status_scrapes"] = len(polled["pages"]), len(polled["scrapes"])
        # The bridge's CPU while open, less what as many payments cost while closed: the page's share (counted
        # in clock ticks of 10 ms: meaningful over a full run, not a quick one).
        page_cpu = cpu["open"] - counts["open"] * cpu["closed"] / max(1, counts["closed"])
        r["status_cpu_ms_per_fetch"] = 1000 * page_cpu / max(1, r["status_pages"] + r["status_scrapes"])
        r["status_page_p50"] = percentile([x * 1000 for x in polled["pages"]], 50) if polled["pages"] else math.nan
        r["status_scrape_p50"] = (percentile([x * 1000 for x in polled["scrapes"]], 50) if polled["scrapes"]
                                  else math.nan)
        r["status_rss"] = proc_status(bridge.pid, "VmRSS")
    finally:
        payer.close()
        stop_process(poller)
    if bridge.stop() is None:
        raise BenchError("the bridge with its status page did not stop within 15 s of SIGTERM")
    return r, made


def status_report(r: dict[str, Any]) -> str:
    return "\n".join([
        "",
        f"status page (a third start, [status] on; blocking client, compare these with each other): payment round "
        f"trip on 1 terminal, page closed p50 {r['status_closed_p50']:.3f} ms, p99 {r['status_closed_p99']:.3f} ms "
        f"(n={r['status_closed_n']}); page open and refreshing p50 {r['status_open_p50']:.3f} ms, p99 "
        f"{r['status_open_p99']:.3f} ms (n={r['status_open_n']})",
        f"status page open: {r['status_pages']} refreshes (every {STATUS_PAGE_INTERVAL:g} s, fetch p50 "
        f"{r['status_page_p50']:.1f} ms) and {r['status_scrapes']} /metrics scrapes (every "
        f"{STATUS_SCRAPE_INTERVAL:g} s, p50 {r['status_scrape_p50']:.1f} ms) during the payments; bridge CPU "
        f"{r['status_closed_cpu_pct']:.0f} % page closed, {r['status_open_cpu_pct']:.0f} % page open (about "
        f"{r['status_cpu_ms_per_fetch']:.1f} ms of bridge CPU per refresh or scrape); resident "
        f"memory with [status] on {r['status_rss_ready'] / 1e6:.1f} MB when ready, {r['status_rss'] / 1e6:.1f} MB "
        f"after",
    ])


# -- the report ---------------------------------------------------------------------------------------------


def report(info: dict[str, Any], r: dict[str, Any], quick: bool) -> str:
    out = []
    out.append(f"terminal-bridge benchmark ({'quick smoke run: figures not meaningful' if quick else 'full run'})")
    out.append(f"machine: {info['nproc']} CPU(s) usable ({info['cpus']} online), {info['cpu']}, "
               f"{info['memory_mib']} MiB RAM, Linux {info['kernel']}")
    out.append(f"software: Python {info['python']}, Twisted {info['twisted']}, autobahn {info['autobahn']}, "
               f"cryptography {info.get('cryptography', '?')}, {info['openssl']}, SQLite {info['sqlite']}")
    out.append(f"journal disk: {info['filesystem']}; fsync of 4 KiB: p50 {info['fsync_p50_ms']:.3f} ms, "
               f"p99 {info['fsync_p99_ms']:.3f} ms")
    n = TERMINALS if "direct_p50_50" in r else None
    rows: list[tuple[str, str, str]] = []
    # the floor of the 1-terminal added latency: a bare TLS WebSocket round trip and the 3 ordered fsyncs
    r["floor_ms"] = floor = r["echo_p50"] + 3 * info["fsync_p50_ms"]

    def ms(key: str) -> str:
        return f"{r[key]:.3f} ms"

    for suffix, what in (("1", "1 terminal"), (str(n), f"{n} terminals at once")):
        count = r.get(f"bridge_n_{suffix}", 0)
        rows.append((f"{what}: direct round trip p50", ms(f"direct_p50_{suffix}"), f"n={count}"))
        rows.append((f"{what}: direct round trip p99", ms(f"direct_p99_{suffix}"), ""))
        rows.append((f"{what}: through the bridge p50", ms(f"bridge_p50_{suffix}"), f"n={count}"))
        rows.append((f"{what}: through the bridge p99", ms(f"bridge_p99_{suffix}"), ""))
        rows.append((f"{what}: added latency p50", ms(f"added_p50_{suffix}"), f"added_p50_{suffix}"))
        rows.append((f"{what}: added latency p99", ms(f"added_p99_{suffix}"), f"added_p99_{suffix}"))
    rows.append(("floor: bare TLS WebSocket round trip p50", ms("echo_p50"), f"n={r['echo_n']}"))
    rows.append(("floor: bare TLS WebSocket round trip p99", ms("echo_p99"), ""))
    rows.append(("floor of the 1-terminal added latency (p50)", ms("floor_ms"), ""))
    rows.append(("throughput: payments per second", f"{r['throughput']:.0f}/s", "throughput"))
    rows.append(("bridge resident memory after load", f"{r['rss'] / 1e6:.1f} MB", "rss"))
    rows.append(("bridge resident memory when ready", f"{r['rss_ready'] / 1e6:.1f} MB", ""))
    rows.append(("start to ready, first start (new TLS key)", f"{r['ready_first']:.3f} s", "ready_first"))
    rows.append(("start to ready, second start", f"{r['ready_second']:.3f} s", "ready_second"))
    rows.append(("start to first TCP accept, first start", f"{r['accept_first']:.3f} s", ""))
    rows.append(("start to first TCP accept, second start", f"{r['accept_second']:.3f} s", ""))

    width = max(len(label) for label, _, _ in rows) + 2
    out.append("")
    out.append(f"{'figure':<{width}}{'value':>12}  {'target':<18} result")
    for label, value, key in rows:
        if key in TARGETS:
            target, check = TARGETS[key]
            verdict = "PASS" if check(r[key], r) else "MISS"
            out.append(f"{label:<{width}}{value:>12}  {target:<18} {verdict}")
        else:
            note = key if key.startswith("n=") else ""
            out.append(f"{label:<{width}}{value:>12}  {'':<18} {note}".rstrip())
    out.append("")
    out.append(f"under the throughput load ({r['throughput_payments']} payments in {r['throughput_seconds']:.1f} s): "
               f"payment round trip p50 {r['throughput_p50']:.1f} ms, p99 {r['throughput_p99']:.1f} ms; "
               f"CPU (100 % = one core): bridge {r['cpu_bridge_pct']:.0f} %, measuring client "
               f"{r['cpu_client_pct']:.0f} %, simulators {r['cpu_sim_pct']:.0f} %")
    out.append(f"floor of the 1-terminal added latency on this machine: a bare TLS WebSocket round trip "
               f"({r['echo_bytes']} bytes, autobahn, nothing else) p50 {r['echo_p50']:.3f} ms + the 3 journal "
               f"fsyncs a payment waits for, p50 3 x {info['fsync_p50_ms']:.3f} ms = {floor:.3f} ms "
               f"(the bridge's own work is the rest: {r['added_p50_1'] - floor:.3f} ms at p50, target 1.0 ms; "
               f"{r['added_p99_1'] - floor:.3f} ms at p99, target 2.5 ms); the echo "
               f"server's CPU per round trip (one message in, one out): {r['echo_server_cpu_ms']:.3f} ms")
    out.append(f"bridge CPU per payment: {r['bridge_cpu_ms_per_payment_1']:.2f} ms one at a time, "
               f"{r['bridge_cpu_ms_per_payment']:.2f} ms under load; peak resident memory "
               f"{r['rss_peak'] / 1e6:.1f} MB (after the load: {r['rss_anon'] / 1e6:.1f} MB heap, "
               f"{(r['rss'] - r['rss_anon']) / 1e6:.1f} MB code and libraries); stop after SIGTERM {r.get('stop_seconds', math.nan):.3f} s")
    other = r.get("other_cpu_pct", 0.0)
    out.append(f"the rest of the machine while measuring ({r.get('measure_seconds', 0):.0f} s): other processes "
               f"{other:.0f} % of a core, stolen by the hypervisor {r.get('steal_pct', 0):.0f} %, load average "
               f"before {r.get('load_before', 0):.2f}" + ("  <- NOT IDLE: figures are pessimistic" if other > 10 or
                                                             r.get("steal_pct", 0) > 10 else ""))
    out.append("latency percentiles are nearest-rank over each path's own samples; added = bridge - direct at the "
               "same percentile. MB = 10^6 bytes.")
    return "\n".join(out)


# -- main ---------------------------------------------------------------------------------------------------


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
    global BRIDGE_CGROUP
    args = parse_args(argv)
    if args.serve_simulators:
        return serve_simulators(args.serve_simulators)
    if args.poll_status_page:
        return poll_status_page(args.poll_status_page)
    BRIDGE_CGROUP = args.bridge_cgroup

    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)  # clean up children and the directory on SIGTERM too
    base = args.dir
    if base:
        os.makedirs(base, exist_ok=True)
    directory = tempfile.mkdtemp(prefix="tb-bench-", dir=base)
    simulators: Optional[subprocess.Popen] = None
    bridges: list[BridgeProcess] = []
    ok = False
    try:
        print("terminal-bridge benchmark: measuring the machine and starting "
              f"{TERMINALS} simulated terminals", file=sys.stderr, flush=True)
        info = machine(directory)
        simulators, sim_ports, echo_port = start_simulators(TERMINALS)
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
                               profile=os.path.abspath(args.profile) if args.profile else None)
        bridges.append(bridge)
        r["ready_second"], r["accept_second"] = bridge.start()
        if args.journal_payments:
            from journal_growth import wait_for_integrity_check

            r["journal_check_seconds"] = wait_for_integrity_check(bridge.pid)
        r["rss_ready"] = proc_status(bridge.pid, "VmRSS")

        from bridge.api.tls import fingerprint_of_pem

        with open(os.path.join(directory, "state", "tls", "bridge.crt"), "rb") as f:
            fingerprint = fingerprint_of_pem(f.read())
        load_before = os.getloadavg()[0]
        busy0, steal0 = system_cpu_seconds()
        ours0 = proc_cpu_seconds(bridge.pid) + proc_cpu_seconds(simulators.pid) + self_cpu_seconds()
        t0 = time.perf_counter()
        figures, bridge_payments, not_approved = measure(
            args, f"wss://127.0.0.1:{port}", fingerprint, clients, sim_ports, bridge.pid, simulators.pid, echo_port)
        r.update(figures)
        elapsed = time.perf_counter() - t0
        busy1, steal1 = system_cpu_seconds()
        ours1 = proc_cpu_seconds(bridge.pid) + proc_cpu_seconds(simulators.pid) + self_cpu_seconds()
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
        journal = sqlite3.connect(f"file:{os.path.join(directory, 'state', 'journal.sqlite3')}?mode=ro", uri=True)
        try:
            # Only the benchmark's own clients' payments (--journal-payments adds others' before the run).
            states = dict(journal.execute("SELECT state, count(*) FROM payments WHERE client_id LIKE 'cl_bench_%' "
                                          "GROUP BY state").fetchall())
        finally:
            journal.close()
        if states != {"approved": bridge_payments}:
            raise BenchError(f"the journal holds {states}, expected {bridge_payments} approved payments")
        status_figures, status_payments = status_phase(args, directory, config, port, clients[0], bridges)
        r.update(status_figures)
        bridge_payments += status_payments
        journal = sqlite3.connect(f"file:{os.path.join(directory, 'state', 'journal.sqlite3')}?mode=ro", uri=True)
        try:
            # the benchmark's own clients' payments only (--journal-payments adds other clients' before the start)
            states = dict(journal.execute("SELECT state, count(*) FROM payments WHERE client_id LIKE 'cl_bench_%' "
                                          "GROUP BY state").fetchall())
        finally:
            journal.close()
        if states != {"approved": bridge_payments}:
            raise BenchError(f"after the status page phase the journal holds {states}, expected "
                             f"{bridge_payments} approved payments")
        problems = sum(b.log_problems() for b in bridges)
        from baseline import libraries_only_rss  # bench/ is sys.path[0]: bench.py runs as a script

        r["rss_libraries"], r["libraries_modules"] = libraries_only_rss(
            child_env(), lambda pid: proc_status(pid, "VmRSS"))

        print(report(info, r, args.quick) + status_report(r), flush=True)
        over = (r["rss"] - r["rss_libraries"]) / 1e6
        print(f"bridge resident memory after the load over a libraries-only process measured in this run "
              f"({r['libraries_modules']} modules imported, nothing run): {r['rss'] / 1e6:.1f} - "
              f"{r['rss_libraries'] / 1e6:.1f} = {over:.1f} MB  (target <= 10 MB) {'PASS' if over <= 10 else 'MISS'}",
              flush=True)
        print(f"journal check: {bridge_payments} payments sent through the bridge, {bridge_payments} journaled "
              f"approved; log events at warn level or above in the bridge's log: {problems}", flush=True)
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
        if args.keep or not ok and os.environ.get("TB_BENCH_KEEP"):
            print(f"kept {directory}", file=sys.stderr)
        else:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
