"""Crash the real daemon at random points of payments, restart it, and check that no payment is lost or doubled.

The daemon runs as a child process (`python -m bridge -c CONFIG run`) against Caisse-AP simulators that live
in this test process, so the test knows every request a terminal received and what it answered.  Each run
arms the fault seam (bridge/core/faults.py) at a named point of a payment, or plans a SIGKILL after a random
delay, starts a payment with a fresh amount (amounts map requests to runs), and kills the daemon if it is
still alive once every payment is final.  The next run's daemon is the restart, so every run is one restart.

After every restart, and whenever every payment is final, the invariants are checked against the journal
(opened read-only beside the daemon):

- no payment lost: every command has exactly one payment, and the journal holds nothing else;
- after recovery no payment stays ``accepted`` or ``in_progress``;
- no command sent twice: each amount reached a terminal at most once;
- nothing ``approved`` (or ``declined``, ``cancelled``) that the terminal did not answer so; ``failed`` only
  for what never reached a terminal;
- every final state reached the reconnecting client, exactly as journaled, after a legal path of states.

``TB_FAULT_RUNS`` (default 100) and ``TB_FAULT_SEED`` (default: random, printed) override the plan;
``TB_FAULT_LANES`` (default 2) runs that many independent daemons side by side to use both cores.
"""

from __future__ import annotations

import json
import os
import random
import signal
from dataclasses import dataclass, field
from typing import Any, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from bridge.api.client import Credentials, connect
from bridge.api.tls import fingerprint_of_pem
from bridge.core import states
from bridge.core.journal import Journal
from bridge.core.payments import payment_view
from bridge.errors import BridgeError
from bridge.terminals.caisse_ap.codec import AnswerParser
from bridge.terminals.caisse_ap.simulator import SimulatorFactory, SimulatorScript
from tests.daemon_process import DaemonProcess, free_port
from tests.support import add_test_client, write_config

RUNS = int(os.environ.get("TB_FAULT_RUNS", "100"))
SEED = int(os.environ.get("TB_FAULT_SEED") or random.SystemRandom().randrange(10**9))
LANES = max(1, int(os.environ.get("TB_FAULT_LANES", "2")))
TERMINALS = ("till-1", "till-2", "till-3", "till-4")

#: Scripts a terminal follows in a run, and the final state the bridge must reach if nothing crashes.
SCRIPTS = [
    ("approve", lambda r: SimulatorScript(delay=r.uniform(0, 0.25)), states.APPROVED),
    ("approve_split", lambda r: SimulatorScript(delay=r.uniform(0, 0.1), split=3, split_gap=0.04),
     states.APPROVED),
    ("decline", lambda r: SimulatorScript(outcome="decline", af="05", delay=r.uniform(0, 0.2)), states.DECLINED),
    ("abandon", lambda r: SimulatorScript(outcome="abandon", delay=r.uniform(0, 0.2)), states.CANCELLED),
    ("disconnect", lambda r: SimulatorScript(disconnect=True, delay=r.uniform(0, 0.1)), states.UNKNOWN),
]
#: What a terminal following each script answers: the states the bridge may journal from its answer.
ANSWERED = {"approve": states.APPROVED, "approve_split": states.APPROVED, "decline": states.DECLINED,
            "abandon": states.CANCELLED, "disconnect": None}

#: Where a run kills the daemon.  FINAL is the state the run's script leads to; @N is the N-th commit.
POINTS = [
    "payment.before_write.accepted",  # before the journal write
    "payment.after_write.accepted",  # after it, before anything is told or sent
    "payment.before_write.in_progress",
    "payment.after_write.in_progress",  # journaled as maybe-sent, request not yet written
    "caisse_ap.request_written",  # the request went out
    "caisse_ap.answer_bytes",  # while the answer arrives
    "caisse_ap.answer_taken",  # the whole answer read, not yet journaled
    "payment.before_write.FINAL",
    "payment.after_write.FINAL",  # the final state on disk, not yet told
    "journal.before_commit@N",
    "journal.after_commit@N",
    "delay",  # SIGKILL from outside after a random delay: anywhere in between
]


@dataclass
class Run:
    index: int
    point: str
    fault: Optional[str]  # what TERMINAL_BRIDGE_FAULT is set to for this run's daemon
    delay: Optional[float]  # or a SIGKILL after this many seconds
    script_name: str
    script: SimulatorScript


@dataclass
class Command:
    id: str
    terminal: str
    amount: int
    payment_id: Optional[str] = None
    refused: Optional[str] = None
    events: dict[int, dict[str, Any]] = field(default_factory=dict)  # seq -> payment, as received

    @property
    def args(self) -> dict[str, Any]:
        return {"terminal": self.terminal, "amount": self.amount, "currency": "EUR"}

    def final_event(self) -> Optional[dict[str, Any]]:
        if not self.events:
            return None
        last = self.events[max(self.events)]
        return last if last["final"] else None


class RecordingSimulator(SimulatorFactory):
    """A simulated terminal that also remembers which script it answered each request with."""

    def __init__(self, clock: Any) -> None:
        super().__init__(clock, SimulatorScript())
        self.answered: list[tuple[int, str]] = []  # (amount, script name)
        self.script_name = "approve"

    def record(self, request: bytes) -> None:
        super().record(request)
        parser = AnswerParser()
        parser.feed(request)
        self.answered.append((int(dict(parser.fields)["CB"]), self.script_name))


def plan(rng: random.Random, first_index: int, count: int) -> list[Run]:
    points = [POINTS[i % len(POINTS)] for i in range(count)]
    rng.shuffle(points)
    runs = []
    for offset, point in enumerate(points):
        name, make, final = rng.choice(SCRIPTS)
        if point in ("caisse_ap.answer_bytes", "caisse_ap.answer_taken") and name == "disconnect":
            name, make, final = SCRIPTS[1]  # that point needs an answer to arrive
        fault, delay = None, None
        if point == "delay":
            delay = rng.uniform(0.0, 0.5)
        elif point.endswith("@N"):
            fault = point[:-1] + str(rng.randint(1, 6))
        else:
            fault = point.replace("FINAL", final)
        runs.append(Run(first_index + offset, point, fault, delay, name, make(rng)))
    return runs


def sleep(seconds: float) -> Deferred:
    return deferLater(reactor, seconds, lambda: None)


class Lane:
    """One daemon, its terminals and its client, crashed and restarted run after run."""

    def __init__(self, test: TestCase, number: int, runs: list[Run], amounts: range) -> None:
        self.test = test
        self.number = number
        self.runs = runs
        self.amounts = iter(amounts)
        self.directory = os.path.abspath(test.mktemp())
        os.makedirs(self.directory)
        self.simulators = {name: RecordingSimulator(reactor) for name in TERMINALS}
        self.commands: dict[str, Command] = {}
        self.seen: dict[int, dict[str, Any]] = {}  # seq -> event, every event received
        self.daemon: Optional[DaemonProcess] = None
        self.proto: Any = None
        self.fired: dict[str, int] = {}
        self.startup_deaths = 0
        self.restarts = 0

    def where(self, run: Optional[Run] = None) -> str:
        text = f"[seed {SEED}, lane {self.number}"
        if run is not None:
            text += f", run {run.index}: {run.fault or f'kill after {run.delay:.3f} s'}, script {run.script_name}"
        return text + "]"

    @inlineCallbacks
    def setUp(self):
        addresses = {}
        for name, simulator in self.simulators.items():
            port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(simulator)
            self.test.addCleanup(port.stopListening)
            self.test.addCleanup(simulator.drop_connections)
            addresses[name] = f"127.0.0.1:{port.getHost().port}"
        self.port = free_port()
        self.config = write_config(self.directory, addresses, port=self.port)
        client = add_test_client(self.config, "pos")
        self.creds = Credentials(client["client_id"], client["secret_in"], client["secret_out"])
        self.journal_path = os.path.join(self.directory, "state", "journal.sqlite3")
        self.test.addCleanup(self._stop)

    @inlineCallbacks
    def _stop(self):
        if self.proto is not None and self.proto.state != self.proto.STATE_CLOSED:
            self.proto.dropConnection(abort=True)
        if self.daemon is not None and self.daemon.alive:
            yield self.daemon.kill()

    @inlineCallbacks
    def start_daemon(self, run: Optional[Run]):
        """Start the daemon armed for ``run``; a daemon that kills itself while recovering is a crash during
        recovery: it is started again unarmed."""
        self.daemon = DaemonProcess.spawn(reactor, self.config, run.fault if run else None)
        try:
            yield self.daemon.ready
        except RuntimeError:
            if self.daemon.fault is None:
                raise
            self.fired[self.daemon.fault + " (during recovery)"] = \
                self.fired.get(self.daemon.fault + " (during recovery)", 0) + 1
            self.startup_deaths += 1
            self.daemon = DaemonProcess.spawn(reactor, self.config, None)
            yield self.daemon.ready
        self.restarts += 1
        if not hasattr(self, "fingerprint"):
            with open(os.path.join(self.directory, "state", "tls", "bridge.crt"), "rb") as f:
                self.fingerprint = fingerprint_of_pem(f.read())

    @inlineCallbacks
    def connect(self):
        factory, opened = connect(reactor, f"wss://127.0.0.1:{self.port}", self.creds,
                                  fingerprint=self.fingerprint, timeout=5)
        self.proto = yield opened
        factory.on_event = self.on_event
        yield self.proto.call("hello", {"client": self.creds.client_id})

    def on_event(self, message: dict[str, Any]) -> None:
        seq = message["seq"]
        body = {k: v for k, v in message.items() if k != "sig"}
        earlier = self.seen.get(seq)
        if earlier is not None:
            self.test.assertEqual(earlier, body, f"{self.where()} event {seq} came twice with different bodies")
        else:
            self.seen[seq] = body
            payment = body["payment"]
            command = self.commands.get(payment["command_id"])
            self.test.assertIsNotNone(command, f"{self.where()} an event for a command never sent: {body}")
            command.events[seq] = payment
        # At-least-once delivery: acknowledge what was handled; a lost ack only means a resend.
        self.proto.call("events.ack", {"seq": seq}).addErrback(lambda f: None)

    @inlineCallbacks
    def wait_dead(self, grace: float = 3.0):
        """The connection broke: the daemon must be dying (else the failure is real)."""
        waited = 0.0
        while self.daemon.alive and waited < grace:
            yield sleep(0.02)
            waited += 0.02
        if self.daemon.alive:
            self.test.fail(f"{self.where()} the connection broke but the daemon lives:\n{self.daemon.tail()}")

    def start_command(self, command: Command) -> None:
        if self.proto.state != self.proto.STATE_OPEN:
            return  # the daemon is dying; the command is sent again after the restart
        d = self.proto.call("payment.start", command.args, message_id=command.id)

        def started(view: dict[str, Any]) -> None:
            if command.payment_id is not None:
                self.test.assertEqual(view["id"], command.payment_id,
                                      f"{self.where()} command {command.id} got two payments")
            command.payment_id = view["id"]

        def refused(failure: Any) -> None:
            failure.trap(BridgeError)
            if failure.value.code == "connection_lost":
                return  # the daemon died: retried after the restart
            if failure.value.code in ("terminal_busy", "rate_limited"):
                # Nothing journaled; the client tries again later.  rate_limited: after a few restarts without
                # the last second of acks on disk, a reconnect replays many events, and this client acks each.
                command.refused = failure.value.code
                return
            self.test.fail(f"{self.where()} payment.start refused: {failure.value.code} {failure.value.message}")

        d.addCallbacks(started, refused)

    def pending(self) -> list[Command]:
        return [c for c in self.commands.values() if c.final_event() is None]

    @inlineCallbacks
    def wait_all_final(self, deadline: float = 15.0):
        """Until every command has its final event, or the daemon died."""
        waited = 0.0
        while self.daemon.alive and self.pending():
            for command in self.pending():
                if command.refused:
                    command.refused = None
                    self.start_command(command)
            yield sleep(0.02)
            waited += 0.02
            if waited > deadline:
                self.test.fail(f"{self.where()} payments never reached a final state: "
                               f"{[(c.id, c.events) for c in self.pending()]}\n{self.daemon.tail()}")

    @inlineCallbacks
    def life(self, run: Run):
        """One life of the daemon: settle what earlier runs left, start this run's payment, die."""
        self.check_recovered(run)
        try:
            yield self.connect()
        except Exception:
            yield self.wait_dead()
            return  # died before the client got in (a journal point hit by recovery's or pruning's writes)
        for command in self.pending():
            self.start_command(command)  # the same command id again: the same payment, never a second one
        busy = {c.terminal for c in self.pending()}
        free = [t for t in TERMINALS if t not in busy]
        if free:  # else every terminal still has a payment of an earlier run to settle
            terminal = free[run.index % len(free)]
            command = Command(f"cmd-{self.number}-{run.index}", terminal, next(self.amounts))
            simulator = self.simulators[terminal]
            simulator.script, simulator.script_name = run.script, run.script_name
            self.commands[command.id] = command
            self.start_command(command)
        killer = reactor.callLater(run.delay, self.daemon.kill) if run.delay is not None else None
        try:
            yield self.wait_all_final()
        finally:
            if killer is not None and killer.active():
                killer.cancel()
        if self.daemon.alive:
            self.check_invariants(run)  # every payment final: the client must hold what the journal holds
            yield self.daemon.kill()
        if self.daemon.fault:
            self.fired[self.daemon.fault] = self.fired.get(self.daemon.fault, 0) + 1
        if self.proto.state != self.proto.STATE_CLOSED:
            self.proto.dropConnection(abort=True)

    @inlineCallbacks
    def go(self):
        yield self.setUp()
        for run in self.runs:
            if self.test.aborted:
                return
            yield self.start_daemon(run)
            yield self.life(run)
        # A last, unarmed life: every command settles and every invariant holds at the end.
        yield self.start_daemon(None)
        self.check_recovered(None)
        yield self.connect()
        for command in self.pending():
            self.start_command(command)
        yield self.wait_all_final()
        self.check_invariants(None)
        yield self.daemon.kill(signal.SIGTERM)
        self.test.assertEqual(self.daemon.status, 0, f"{self.where()} a clean stop:\n{self.daemon.tail()}")

    # -- invariants ------------------------------------------------------------------------------

    def _journal(self) -> Journal:
        return Journal.open_readonly(self.journal_path)

    def check_recovered(self, run: Optional[Run]) -> None:
        journal = self._journal()
        try:
            stuck = journal.in_flight()
        finally:
            journal.close()
        self.test.assertEqual([(r.id, r.state) for r in stuck], [],
                              f"{self.where(run)} payments left in flight after recovery")

    def check_invariants(self, run: Optional[Run]) -> None:
        where = self.where(run)
        journal = self._journal()
        try:
            records = journal.list(limit=10**6)
            by_command = {r.command_id: r for r in records}
            self.test.assertEqual(sorted(by_command), sorted(self.commands),
                                  f"{where} the journal's payments are not the commands sent")
            received: dict[int, list[str]] = {}
            for simulator in self.simulators.values():
                for amount, script_name in simulator.answered:
                    received.setdefault(amount, []).append(script_name)
            for command in self.commands.values():
                record = by_command[command.id]
                what = f"{where} command {command.id} (amount {command.amount}, payment {record.id})"
                got = received.get(command.amount, [])
                self.test.assertLessEqual(len(got), 1, f"{what} reached a terminal {len(got)} times")
                self.test.assertTrue(states.is_final(record.state), f"{what} is {record.state}")
                if command.payment_id is not None:
                    self.test.assertEqual(command.payment_id, record.id, f"{what} changed payment")
                answered = ANSWERED[got[0]] if got else None
                if record.state in (states.APPROVED, states.DECLINED, states.CANCELLED):
                    self.test.assertEqual(record.state, answered,
                                          f"{what} is {record.state} but the terminal answered {got}")
                if record.state == states.FAILED:
                    self.test.assertEqual(got, [], f"{what} is failed but reached the terminal")
                expected = json.loads(json.dumps(payment_view(record)))
                self.test.assertEqual(command.final_event(), expected,
                                      f"{what}: the final event differs from the journal")
                path = [command.events[seq]["state"] for seq in sorted(command.events)]
                self.test.assertEqual(path[0], states.ACCEPTED, f"{what} events {path}")
                for before, after in zip(path, path[1:]):
                    self.test.assertIn(after, states.TRANSITIONS[before], f"{what} events {path}")
        finally:
            journal.close()


class FaultInjectionTests(TestCase):
    timeout = 600

    def test_crashes_at_random_points_lose_and_double_nothing(self):
        print(f"\nfault injection: seed {SEED} (TB_FAULT_SEED), {RUNS} runs (TB_FAULT_RUNS), {LANES} lane(s)")
        rng = random.Random(SEED)
        per_lane = [RUNS // LANES + (1 if i < RUNS % LANES else 0) for i in range(LANES)]
        lanes, first = [], 0
        for number, count in enumerate(per_lane):
            runs = plan(random.Random(rng.randrange(10**9)), first, count)
            lanes.append(Lane(self, number, runs, range(1001 + number * 100000, 1001 + (number + 1) * 100000)))
            first += count

        def report(_):
            fired: dict[str, int] = {}
            for lane in lanes:
                for name, count in lane.fired.items():
                    fired[name] = fired.get(name, 0) + count
            runs = sum(len(lane.runs) for lane in lanes)
            print(f"fault injection: seed {SEED}: {runs} runs, {sum(lane.restarts for lane in lanes)} restarts, "
                  f"{sum(len(lane.commands) for lane in lanes)} payments; checkpoints hit: "
                  + ", ".join(f"{k} x{v}" for k, v in sorted(fired.items())))
            self.assertGreaterEqual(runs, RUNS)
            if RUNS >= 2 * len(POINTS):
                # Each named point of a payment was really reached (not only planned).
                for point in POINTS[:9]:
                    hits = [k for k in fired if k.startswith(point.replace(".FINAL", "."))]
                    self.assertTrue(hits, f"[seed {SEED}] no run died at {point}: {fired}")

        def go(lane):
            def failed(failure):
                self.aborted = True  # the other lanes stop after their current run
                return failure
            return lane.go().addErrback(failed)

        def first_failure(results):
            for ok, result in results:
                if not ok:
                    return result
            return None

        self.aborted = False
        return DeferredList([go(lane) for lane in lanes], consumeErrors=True).addCallback(
            first_failure).addCallback(report)
