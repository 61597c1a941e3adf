"""The simulators' process: ``bench.py --serve-simulators N`` holds N Caisse-AP simulators that answer at once,
and with ``--serve-echo`` the bare TLS WebSocket echo server of the floor measurement (floor.py; the benchmark
runs it in a process of its own, on the bridge's CPU: placement.py); :func:`start_simulators` spawns it from the
measuring process and reads the ports it announces."""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
from typing import Any, Optional

from common import BENCH_SCRIPT, BenchError
from floor import listen_echo
from processes import child_env, set_parent_death_signal, stop_process


def serve_simulators(count: int, echo: bool = False) -> int:
    """``--serve-simulators N``: N Caisse-AP simulators answering at once (and with ``echo`` the floor's echo
    server); print their ports; exit on stdin EOF."""
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
        echo_port = (yield listen_echo(reactor, echo_dir)) if echo else None
        stdio_proto.transport.write((json.dumps({"ports": ports, "echo_port": echo_port}) + "\n").encode())

    echo_dir = tempfile.mkdtemp(prefix="tb-bench-echo-")
    reactor.addSystemEventTrigger("after", "shutdown", shutil.rmtree, echo_dir, True)

    stdio_proto = Parent()
    stdio.StandardIO(stdio_proto)
    reactor.callWhenRunning(start)
    reactor.run()
    return 0


def start_simulators(count: int, echo: bool = False, cpus: Optional[frozenset[int]] = None,
                     timeout: float = 20.0) -> tuple[subprocess.Popen, list[int], Optional[int]]:
    """Spawn the simulators' process (on ``cpus`` if given): (process, the simulators' ports, the echo's port)."""

    def preexec() -> None:
        set_parent_death_signal()
        if cpus is not None:
            os.sched_setaffinity(0, cpus)

    proc = subprocess.Popen([sys.executable, BENCH_SCRIPT, "--serve-simulators", str(count)]
                            + (["--serve-echo"] if echo else []),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=child_env(),
                            preexec_fn=preexec)
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
