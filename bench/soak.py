#!/usr/bin/env python3
"""`make soak`: an hour of 50 terminals x 10 clients against one bridge; is its memory flat, and does nothing fail?

Not in CI (it takes an hour).  The bridge, the 50 simulators and the 500 clients are bench.py's (the same
processes, configuration and client); here every terminal has 10 clients (10 tills sharing a terminal, each
with its own credentials and connection), which take turns: one payment at a time per terminal, ``--pause``
seconds apart.  The bridge's resident memory is sampled every ``--sample`` seconds; after ``--warmup`` seconds
(caches, the replay window and SQLite's page cache filling) the samples must stay within 2 MB of each other
(target), with 0 errors: every payment approved, no log line at warning level or above, and the journal
holding exactly the payments sent (the journal check).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Optional

from bridge_process import BridgeProcess, write_config  # bench/ is sys.path[0]: this runs as a script
from clients import BridgeClient
from common import BenchError, TERMINALS
from processes import free_port, stop_process
from sampling import proc_status
from simulators import start_simulators

CLIENTS_PER_TERMINAL = 10


def config(directory: str, port: int, sim_ports: list[int]) -> tuple[str, list[dict[str, str]]]:
    from bridge.api.signing import new_secret
    from bridge.config import add_client

    path = write_config(directory, port, sim_ports)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    with open(path, "w", encoding="utf-8") as f:
        f.write(text.replace("messages_per_second = 10000",
                             "messages_per_second = 10000\nmax_connections = "
                             f"{len(sim_ports) * CLIENTS_PER_TERMINAL + 16}"))
    with open(os.path.join(directory, "clients.json"), encoding="utf-8") as f:
        clients = json.load(f)
    for index in range(len(clients), len(sim_ports) * CLIENTS_PER_TERMINAL):
        client = {"client_id": f"cl_bench_{index}", "secret_in": new_secret(), "secret_out": new_secret()}
        add_client(os.path.join(directory, "clients.conf"), f"pos-{index}", client["client_id"],
                   client["secret_in"], client["secret_out"], ("pay", "read"))
        clients.append(client)
    return path, clients


def soak(args: argparse.Namespace, url: str, fingerprint: str, clients: list[dict[str, str]], terminals: int,
         bridge_pid: int) -> dict[str, Any]:
    from twisted.internet import reactor
    from twisted.internet.defer import gatherResults, inlineCallbacks
    from twisted.internet.task import LoopingCall, deferLater
    from twisted.logger import globalLogBeginner

    from bridge.api.client import Credentials, connect

    errors: list[str] = []

    def observer(event: dict[str, Any]) -> None:
        if event.get("log_level") is not None and event["log_level"].name in ("error", "critical"):
            from twisted.logger import formatEvent

            errors.append("client: " + formatEvent(event))

    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    r: dict[str, Any] = {"payments": 0, "samples": [], "errors": errors}
    started = [time.monotonic()]  # reset once every client is connected: the soak's time starts then

    def elapsed() -> float:
        return time.monotonic() - started[0]

    @inlineCallbacks
    def one(index: int):
        c = clients[index]
        creds = Credentials(c["client_id"], c["secret_in"], c["secret_out"])
        factory, opened = connect(reactor, url, creds, fingerprint=fingerprint)
        proto = yield opened
        yield proto.call("hello", {"client": creds.client_id})
        return BridgeClient(proto, factory, f"t{index % terminals}")

    @inlineCallbacks
    def till(terminal: int, team: list[Any]):
        turn = 0
        while elapsed() < args.duration:
            client = team[turn % len(team)]
            turn += 1
            try:
                _, state = yield client.pay()
            except Exception as e:  # a refused or lost payment is an error of the soak
                errors.append(f"t{terminal}: {e!r}")
                state = None
            r["payments"] += 1
            if state != "approved":
                errors.append(f"t{terminal}: a payment ended {state}")
            yield deferLater(reactor, args.pause, lambda: None)

    def sample() -> None:
        r["samples"].append((elapsed(), proc_status(bridge_pid, "VmRSS")))
        print(f"  .. {elapsed():6.0f} s: {r['payments']} payments, bridge resident "
              f"{r['samples'][-1][1] / 1e6:.1f} MB, errors {len(errors)}", file=sys.stderr, flush=True)

    @inlineCallbacks
    def run():
        connected: list[Any] = []
        for first in range(0, len(clients), 20):  # 20 TLS handshakes at a time: 500 at once time out
            connected += yield gatherResults([one(i) for i in range(first, min(first + 20, len(clients)))],
                                             consumeErrors=True)
        print(f"  .. {len(connected)} clients connected", file=sys.stderr, flush=True)
        started[0] = time.monotonic()
        teams: dict[int, list[Any]] = {}
        for index, client in enumerate(connected):
            teams.setdefault(index % terminals, []).append(client)
        sampler = LoopingCall(sample)
        sampler.start(args.sample)
        yield gatherResults([till(t, team) for t, team in teams.items()], consumeErrors=True)
        sampler.stop()
        sample()
        yield gatherResults([client.ack_rest() for client in connected])
        for client in connected:
            client.proto.sendClose()
        yield deferLater(reactor, 0.5, lambda: None)

    outcome: dict[str, Any] = {}

    def finished(result: Any) -> None:
        outcome["failure"] = result if hasattr(result, "getErrorMessage") else None
        reactor.stop()

    reactor.callWhenRunning(lambda: run().addBoth(finished))
    reactor.run()
    if outcome.get("failure") is not None:
        raise BenchError(f"the soak failed: {outcome['failure'].getErrorMessage()}")
    return r


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=3600.0, help="seconds of payments (default 3600)")
    p.add_argument("--warmup", type=float, default=600.0, help="seconds before memory must be flat (default 600)")
    p.add_argument("--sample", type=float, default=60.0, help="seconds between memory samples (default 60)")
    p.add_argument("--pause", type=float, default=1.0, help="seconds between one terminal's payments (default 1)")
    p.add_argument("--terminals", type=int, default=TERMINALS)
    args = p.parse_args(argv)
    directory = tempfile.mkdtemp(prefix="tb-soak-")
    simulators = bridge = None
    try:
        print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
        simulators, sim_ports, _ = start_simulators(args.terminals)
        port = free_port()
        path, clients = config(directory, port, sim_ports)
        bridge = BridgeProcess(directory, path, port, "soak")
        bridge.start()
        from bridge.api.tls import fingerprint_of_pem

        with open(os.path.join(directory, "state", "tls", "bridge.crt"), "rb") as f:
            fingerprint = fingerprint_of_pem(f.read())
        r = soak(args, f"wss://127.0.0.1:{port}", fingerprint, clients, args.terminals, bridge.pid)
        if bridge.stop() is None:
            raise BenchError("the bridge did not stop within 15 s of SIGTERM")
        import sqlite3

        journal = sqlite3.connect(f"file:{os.path.join(directory, 'state', 'journal.sqlite3')}?mode=ro", uri=True)
        states = dict(journal.execute("SELECT state, count(*) FROM payments GROUP BY state").fetchall())
        journal.close()
        problems = bridge.log_problems()
        after = [rss for at, rss in r["samples"] if at >= args.warmup] or [r["samples"][-1][1]]
        spread = (max(after) - min(after)) / 1e6
        errors = len(r["errors"])
        print(f"soak: {args.terminals} terminals x {CLIENTS_PER_TERMINAL} clients, {args.duration:.0f} s, "
              f"{r['payments']} payments", flush=True)
        print(f"  bridge resident memory after the {args.warmup:.0f} s warm-up: {min(after) / 1e6:.1f} to "
              f"{max(after) / 1e6:.1f} MB over {len(after)} samples, spread {spread:.1f} MB  (target <= 2 MB) "
              f"{'PASS' if spread <= 2.0 else 'MISS'}", flush=True)
        print(f"  errors: {errors} (payments not approved or refused, client errors)  (target 0) "
              f"{'PASS' if errors == 0 else 'MISS'}", flush=True)
        for line in r["errors"][:5]:
            print(f"    {line}", flush=True)
        print(f"journal check: {r['payments']} payments sent through the bridge, {states.get('approved', 0)} "
              f"journaled approved, other states {({k: v for k, v in states.items() if k != 'approved'})}; "
              f"log events at warn level or above in the bridge's log: {problems}", flush=True)
        print(f"load average after: {os.getloadavg()[0]:.2f}", flush=True)
        ok = errors == 0 and problems == 0 and states == {"approved": r["payments"]}
        return 0 if ok else 1
    except BenchError as e:
        print(f"soak failed: {e}", file=sys.stderr)
        if bridge is not None:
            print(bridge.log_tail(), file=sys.stderr)
        return 1
    finally:
        if bridge is not None:
            bridge.stop()
        stop_process(simulators)
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
