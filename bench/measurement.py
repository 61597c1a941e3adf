"""The measuring phases, run in this process on its own reactor against a running bridge: 1 terminal (direct,
through the bridge, and the floor's two parts, in turn), the floor apart, 50 terminals at once, and the
throughput run, with the bridge's CPU and memory sampled around them."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import uuid
from typing import Any, Optional

from clients import BridgeClient, direct_payment
from common import AMOUNT, CURRENCY, BenchError, percentile
from floor import echo_client
from machine import FsyncProbe
from sampling import proc_cpu_seconds, proc_status, self_cpu_seconds


class Measurement:
    """Runs the phases against a running bridge; fills ``results``."""

    def __init__(self, reactor: Any, args: argparse.Namespace, url: str, fingerprint: str,
                 clients: list[dict[str, str]], sim_ports: list[int], bridge_pid: int, sim_pid: int,
                 echo_port: int, echo_pid: int, probe_dir: str, probe_cpus: Optional[frozenset[int]],
                 log_size: Any = None) -> None:
        self.reactor, self.args, self.url, self.fingerprint = reactor, args, url, fingerprint
        #: Where the floor's fsync is sampled: the directory the bridge's journal is in (its filesystem).
        self.probe_dir = probe_dir
        #: The CPUs the fsync probe runs on: the bridge's, where its journal's writer thread fsyncs (placement.py).
        self.probe_cpus = probe_cpus
        self.credentials = clients
        self.sim_ports, self.bridge_pid, self.sim_pid = sim_ports, bridge_pid, sim_pid
        self.echo_port, self.echo_pid = echo_port, echo_pid
        #: Reads the bridge's log size when its memory is read (the modules it imported by then, baseline.py).
        self.log_size = log_size
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
            if self.log_size is not None:
                self.results["log_bytes_at_rss"] = self.log_size()
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
        from twisted.internet.defer import gatherResults
        from twisted.internet.task import deferLater

        def close(_: Any) -> Any:
            for client in self.clients:
                client.proto.sendClose()
            return deferLater(self.reactor, 0.2, lambda: None)

        return gatherResults([client.ack_rest() for client in self.clients]).addCallback(close)

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
        """Payments one after the other on terminal t0, in turn with the floor's two parts: a direct payment, one
        through the bridge, a round trip over the bare TLS WebSocket and an fsync of the journal's disk, again and
        again.  The floor is then measured in the same seconds as the payments it is the floor of: this machine's
        speed changes within minutes (docs/performance.md), and a floor measured apart from them is off by as much."""
        from twisted.internet.defer import inlineCallbacks

        @inlineCallbacks
        def run():
            client = self.clients[0]
            self.progress(f"1 terminal: {self.args.warmup} warm-up + {self.args.payments} payments each way, each "
                          f"with an echo round trip and an fsync (the floor)")
            echo = yield echo_client(self.reactor, self.echo_port)
            message = self._echo_message()
            probe = FsyncProbe(self.probe_dir, self.probe_cpus)
            try:
                for _ in range(self.args.warmup):
                    yield self._direct(0)
                    yield self._bridge(client)
                    yield echo.echo(message)
                    probe.sample()
                direct, bridged, echoes, fsyncs = [], [], [], []
                cpu0 = proc_cpu_seconds(self.bridge_pid)
                for _ in range(self.args.payments):
                    direct.append((yield self._direct(0)))
                    bridged.append((yield self._bridge(client)))
                    echoes.append((yield echo.echo(message)) * 1000)
                    fsyncs.append(probe.sample())
                cpu = proc_cpu_seconds(self.bridge_pid) - cpu0
            finally:
                probe.close()
                echo.sendClose()
            self._latencies("1", direct, bridged)
            self.results["bridge_cpu_ms_per_payment_1"] = cpu * 1000 / len(bridged)
            self.results["floor_echo_p50_1"] = percentile(echoes, 50)
            self.results["floor_fsync_p50_1"] = percentile(fsyncs, 50)
            self.results["floor_fsync_p99_1"] = percentile(fsyncs, 99)
            self.results["floor_n_1"] = len(echoes)

        return run()

    @staticmethod
    def _echo_message() -> bytes:
        """What the floor's echo sends: a command the size of a payment's."""
        return json.dumps({"id": str(uuid.uuid4()), "op": "payment.start", "args": {"x": "x" * 280}}).encode()

    def floor(self):
        """Round trips of a message the size of a payment's over a bare TLS WebSocket (autobahn, no bridge code):
        the part of the added latency this stack costs on this machine before the bridge does anything, measured
        apart (the 1-terminal phase measures it too, between its payments), with the echo server's CPU."""
        from twisted.internet.defer import inlineCallbacks

        @inlineCallbacks
        def run():
            count = self.args.payments if self.args.quick else max(self.args.payments, 1000)
            self.progress(f"floor: {self.args.warmup} warm-up + {count} round trips over a bare TLS WebSocket")
            client = yield echo_client(self.reactor, self.echo_port)
            message = self._echo_message()
            samples = []
            for _ in range(self.args.warmup):
                yield client.echo(message)
            cpu0 = proc_cpu_seconds(self.echo_pid)  # the echo server's process
            # more round trips than payments: the CPU figure is counted in ticks of 10 ms
            for _ in range(count):
                elapsed = yield client.echo(message)
                samples.append(elapsed * 1000)
            cpu = proc_cpu_seconds(self.echo_pid) - cpu0
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
            echo_port: int, echo_pid: int, probe_dir: str, probe_cpus: Optional[frozenset[int]],
            log_size: Any = None) -> tuple[dict[str, Any], int, list[str]]:
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
    m = Measurement(reactor, args, url, fingerprint, clients, sim_ports, bridge_pid, sim_pid, echo_port, echo_pid,
                    probe_dir, probe_cpus, log_size)
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
