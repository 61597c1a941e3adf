"""Durability over real sockets: lost clients, lost terminals, duplicate commands, a journal that cannot write."""

import os
import shutil
import subprocess

from twisted.internet import reactor
from twisted.internet.defer import DeferredList, gatherResults, inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from bridge.api.client import Credentials, connect
from bridge.api.tls import ensure_certificate, fingerprint_of_pem
from bridge.core.journal import Journal
from bridge.core.payments import PaymentService
from bridge.core.registry import TerminalRegistry
from bridge.errors import BridgeError
from bridge.service.daemon import Daemon
from bridge.core.contract import Outcome
from bridge.terminals.caisse_ap.codec import AnswerParser, encode_fields
from bridge.terminals.caisse_ap.simulator import SimulatorFactory, SimulatorScript, answer_fields
from tests.daemon_process import DaemonProcess, free_port
from tests.support import (APPROVED, RecordingDriver, add_test_client, credentials_of, load_config, start_daemon,
                           start_simulator, write_config)

PAYMENT = {"terminal": "till-1", "amount": 1234, "currency": "EUR"}


def sleep(seconds):
    return deferLater(reactor, seconds, lambda: None)


class _HalfAnswer(Protocol):
    """A terminal that reads the request, sends the first half of an approval, then hangs up."""

    def connectionMade(self):
        self.parser = AnswerParser()

    def dataReceived(self, data):
        self.parser.feed(data)
        if self.parser.complete:
            self.factory.requests.append(data)
            answer = encode_fields(answer_fields(self.parser.fields, SimulatorScript()))
            self.transport.write(answer[: len(answer) // 2])
            self.transport.loseConnection()


class _Bridge:
    """Helpers shared by the tests that talk to a daemon over TLS WebSocket."""

    @inlineCallbacks
    def open(self, hello=True):
        factory, opened = connect(reactor, self.url, self.creds, fingerprint=self.fingerprint)
        proto = yield opened
        proto.events = []
        factory.on_event = proto.events.append
        self.addCleanup(self._close, proto)
        if hello:
            proto.hello = yield proto.call("hello", {"client": self.creds.client_id})
        return proto

    def _close(self, proto):
        if proto.state != proto.STATE_CLOSED:
            proto.sendClose()
            return proto.factory.closed
        return None

    @inlineCallbacks
    def until(self, predicate, what):
        for _ in range(250):
            value = predicate()
            if value:
                return value
            yield sleep(0.02)
        self.fail(f"never happened: {what}")

    def final_events(self, proto, payment_id):
        return [e for e in proto.events if e["payment"]["id"] == payment_id and e["payment"]["final"]]


class ReconnectTests(_Bridge, TestCase):
    timeout = 20

    @inlineCallbacks
    def setUp(self):
        self.terminals = {}
        addresses = {}
        scripts = {"till-1": SimulatorScript(delay=0.3), "till-hangs-up": SimulatorScript(disconnect=True, delay=0.05)}
        for name, script in scripts.items():
            self.terminals[name] = SimulatorFactory(reactor, script)
            port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(self.terminals[name])
            self.addCleanup(port.stopListening)
            self.addCleanup(self.terminals[name].drop_connections)
            addresses[name] = f"127.0.0.1:{port.getHost().port}"
        half = Factory.forProtocol(_HalfAnswer)
        half.requests = []
        self.terminals["till-half"] = half
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(half)
        self.addCleanup(port.stopListening)
        addresses["till-half"] = f"127.0.0.1:{port.getHost().port}"
        directory = self.mktemp()
        os.makedirs(directory)
        path = write_config(directory, addresses)
        self.creds = credentials_of(add_test_client(path, "pos"))
        self.daemon, self.url, self.fingerprint = yield start_daemon(self, path, reactor)

    def journaled(self, payment_id):
        return self.daemon.journal.get(payment_id)

    @inlineCallbacks
    def test_a_client_gone_mid_payment_gets_the_final_event_at_its_next_hello(self):
        proto = yield self.open()
        started = yield proto.call("payment.start", PAYMENT, message_id="cmd-away")
        proto.dropConnection(abort=True)  # the till's network drops while the customer types the PIN
        yield proto.factory.closed
        record = yield self.until(lambda: (r := self.journaled(started["id"])) and r.state == "approved" and r,
                                  "the payment is approved in the journal")
        back = yield self.open()
        finals = yield self.until(lambda: self.final_events(back, started["id"]), "the final event")
        self.assertEqual(finals[0]["payment"]["state"], "approved")
        self.assertEqual(finals[0]["payment"]["updated"], self.daemon.payments.get(record.id)["updated"])
        self.assertEqual(len(self.terminals["till-1"].requests), 1)

    @inlineCallbacks
    def test_events_resume_replays_every_missed_event_in_order_and_ack_stops_the_replay(self):
        proto = yield self.open()
        started = yield proto.call("payment.start", PAYMENT)
        yield self.until(lambda: proto.events, "the accepted event")
        seen = proto.events[0]["seq"]
        yield proto.call("events.ack", {"seq": seen})
        proto.dropConnection(abort=True)
        yield proto.factory.closed
        yield self.until(lambda: self.journaled(started["id"]).state == "approved", "the approval")
        back = yield self.open()
        self.assertEqual(back.hello["acked_seq"], seen)
        yield self.until(lambda: self.final_events(back, started["id"]), "the replay after the ack")
        self.assertEqual([e["payment"]["state"] for e in back.events], ["in_progress", "approved"])
        # A client that lost its own record of events asks for everything again: same events, same order.
        del back.events[:]
        answer = yield back.call("events.resume", {"after": 0})
        self.assertEqual(answer["resumed_after"], 0)
        yield self.until(lambda: len(back.events) == 3, "three events replayed")
        self.assertEqual([e["payment"]["state"] for e in back.events], ["accepted", "in_progress", "approved"])
        seqs = [e["seq"] for e in back.events]
        self.assertEqual(seqs, sorted(seqs))
        yield back.call("events.ack", {"seq": seqs[-1]})
        again = yield self.open()
        self.assertEqual(again.hello["acked_seq"], seqs[-1])
        # The replay is sent before hello's reply, on the same connection: had there been one, it is here.
        self.assertEqual(again.events, [])

    @inlineCallbacks
    def test_a_terminal_that_hangs_up_after_the_request_leaves_the_payment_unknown(self):
        proto = yield self.open()
        started = yield proto.call("payment.start", dict(PAYMENT, terminal="till-hangs-up"))
        finals = yield self.until(lambda: self.final_events(proto, started["id"]), "the final event")
        payment = finals[0]["payment"]
        self.assertEqual((payment["state"], payment["reason"]["code"]), ("unknown", "link_lost"))
        self.assertIn("receipt", payment["reason"]["message"])
        self.assertEqual(len(self.terminals["till-hangs-up"].requests), 1)
        self.assertEqual(self.journaled(started["id"]).state, "unknown")

    @inlineCallbacks
    def test_a_terminal_that_hangs_up_halfway_through_its_approval_leaves_the_payment_unknown(self):
        proto = yield self.open()
        started = yield proto.call("payment.start", dict(PAYMENT, terminal="till-half"))
        finals = yield self.until(lambda: self.final_events(proto, started["id"]), "the final event")
        self.assertEqual(finals[0]["payment"]["state"], "unknown")
        self.assertEqual(len(self.terminals["till-half"].requests), 1)

    @inlineCallbacks
    def test_one_command_id_sent_at_once_on_five_connections_is_one_payment(self):
        connections = yield gatherResults([self.open() for _ in range(5)])
        # Every copy is on the wire before the first reply can come back.
        replies = yield gatherResults([c.call("payment.start", PAYMENT, message_id="dup-5") for c in connections])
        self.assertEqual(len({r["id"] for r in replies}), 1)
        yield self.until(lambda: self.final_events(connections[0], replies[0]["id"]), "the final event")
        self.assertEqual(len(self.terminals["till-1"].requests), 1)
        self.assertEqual([r.id for r in self.daemon.journal.list()], [replies[0]["id"]])
        for c in connections:  # the same client on every connection: each hears the one payment's end
            yield self.until(lambda c=c: self.final_events(c, replies[0]["id"]), "the final event everywhere")

    @inlineCallbacks
    def test_one_command_id_sent_at_once_with_other_arguments_is_refused(self):
        a, b = yield gatherResults([self.open(), self.open()])
        results = yield DeferredList([a.call("payment.start", PAYMENT, message_id="dup-x"),
                                      b.call("payment.start", dict(PAYMENT, amount=999), message_id="dup-x")],
                                     consumeErrors=True)
        # Whichever arrived first started the payment; the other is told the id is taken.
        self.assertEqual(sorted(ok for ok, _ in results), [False, True])
        (_, winner), = [r for r in results if r[0]]
        (_, loser), = [r for r in results if not r[0]]
        self.assertEqual(loser.value.code, "idempotency_mismatch")
        yield self.until(lambda: self.final_events(a, winner["id"]), "the final event")
        self.assertEqual(len(self.terminals["till-1"].requests), 1)
        self.assertIn(f"CB{len(str(winner['amount'])):03d}{winner['amount']}".encode(),
                      self.terminals["till-1"].requests[0])
        self.assertEqual([r.id for r in self.daemon.journal.list()], [winner["id"]])


class JournalFailsMidPaymentTests(SynchronousTestCase):
    """The journal stops accepting writes after a payment was accepted (disk filled up, remounted read-only)."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.journal = Journal.open(os.path.join(self.mktemp(), "journal.sqlite3"), threaded=False,
                                    now=self.clock.seconds)
        self.addCleanup(self.journal.close)
        self.driver = RecordingDriver("till-1")
        self.service = PaymentService(self.journal, TerminalRegistry([self.driver]), self.clock)
        self.events = []
        self.service.subscribe(lambda e: self.events.append(e.body["payment"]["state"]))

    def writable(self, yes):
        self.journal._writer._conn.execute(f"PRAGMA query_only={'OFF' if yes else 'ON'}")

    def test_a_payment_that_cannot_be_sent_is_told_failed_once_the_journal_writes_again(self):
        self.driver.connecting = True
        view = self.successResultOf(self.service.start("cl_a", "cmd-1", dict(PAYMENT)))
        self.writable(False)
        before_send = self.driver.hooks[view["id"]]
        self.assertEqual(self.failureResultOf(before_send(), BridgeError).value.code, "journal_unavailable")
        self.driver.finish(Outcome("failed", "journal_unavailable", "Not sent."))
        self.assertEqual(self.driver.sent, [])
        self.assertEqual(self.events, ["accepted"])  # nothing is told that is not on disk
        self.writable(True)
        self.clock.advance(60)
        self.assertEqual(self.journal.get(view["id"]).state, "failed")
        self.assertEqual(self.events, ["accepted", "failed"])

    def test_an_approval_that_cannot_be_journaled_is_told_once_the_journal_writes_again(self):
        view = self.successResultOf(self.service.start("cl_a", "cmd-1", dict(PAYMENT)))
        self.writable(False)
        self.driver.finish(APPROVED)
        self.assertEqual(self.journal.get(view["id"]).state, "in_progress")
        self.assertEqual(self.events, ["accepted", "in_progress"])
        self.clock.advance(5)
        self.assertEqual(self.events, ["accepted", "in_progress"])
        self.writable(True)
        self.clock.advance(60)
        self.assertEqual(self.journal.get(view["id"]).state, "approved")
        self.assertEqual(self.events, ["accepted", "in_progress", "approved"])
        self.clock.advance(3600)
        self.assertEqual(self.events, ["accepted", "in_progress", "approved"])  # journaled once, told once


#: Mounts a small tmpfs on the state directory ($1) in a private mount namespace, then runs the daemon.
_MOUNT_THEN_RUN = 'mount -t tmpfs -o size=3m,mode=0750 tmpfs "$1" && shift && exec "$@"'


def _can_mount_tmpfs():
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                            "mount -t tmpfs -o size=1m tmpfs /mnt 2>/dev/null || "
                            "mount -t tmpfs -o size=1m tmpfs /tmp"], capture_output=True)
    return probe.returncode == 0


class FullDiskTests(_Bridge, TestCase):
    """The real daemon with its state directory on a small tmpfs that the test fills up: SQLite meets a real
    ENOSPC.  Needs root and mount namespaces (`unshare -m`); skipped where those are not available."""

    timeout = 30

    @inlineCallbacks
    def setUp(self):
        if not _can_mount_tmpfs():
            raise SkipTest("needs root and `unshare -m` to mount a small tmpfs")
        self.simulator, terminal = yield start_simulator(self, reactor)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(directory, "state"))
        os.makedirs(os.path.join(directory, "tls"))
        cert, key = os.path.join(directory, "tls", "bridge.crt"), os.path.join(directory, "tls", "bridge.key")
        ensure_certificate(cert, key)
        port = free_port()
        path = write_config(directory, {"till-1": terminal}, port=port,
                            extra=f"tls_certificate = {cert}\ntls_key = {key}")
        creds = add_test_client(path, "pos")
        self.creds = Credentials(creds["client_id"], creds["secret_in"], creds["secret_out"])
        with open(cert, "rb") as f:
            self.fingerprint = fingerprint_of_pem(f.read())
        self.url = f"wss://127.0.0.1:{port}"
        state = os.path.join(directory, "state")
        self.daemon = DaemonProcess.spawn(
            reactor, path, prefix=["unshare", "-m", "--propagation", "private", "sh", "-c", _MOUNT_THEN_RUN, "sh",
                                   state])
        self.addCleanup(self.daemon.kill)
        yield self.daemon.ready
        # The daemon's view of its state directory: the tmpfs exists only in its mount namespace.
        self.state = f"/proc/{self.daemon.transport.pid}/root{state}"

    def fill(self):
        filler = os.path.join(self.state, "filler")
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                os.write(fd, b"\0" * 65536)
        except OSError as e:
            self.assertEqual(e.errno, 28)  # ENOSPC
        finally:
            os.close(fd)
        fd = os.open(filler, os.O_WRONLY | os.O_APPEND)  # the last few bytes too
        try:
            while True:
                os.write(fd, b"\0" * 512)
        except OSError:
            pass
        finally:
            os.close(fd)
        self.addCleanup(lambda: os.path.exists(filler) and os.remove(filler))
        return filler

    @inlineCallbacks
    def test_a_full_disk_refuses_payments_sends_nothing_and_the_daemon_serves_on(self):
        proto = yield self.open()
        first = yield proto.call("payment.start", PAYMENT, message_id="before-full")
        yield self.until(lambda: self.final_events(proto, first["id"]), "the first payment's end")
        filler = self.fill()

        try:
            yield proto.call("payment.start", dict(PAYMENT, amount=555), message_id="while-full")
        except BridgeError as e:
            error = e
        else:
            self.fail("a payment was accepted on a full disk")
        self.assertEqual(error.code, "journal_unavailable")
        self.assertIn("disk is full", error.message)
        self.assertEqual(len(self.simulator.requests), 1)  # the refused payment never reached the terminal
        info = yield proto.call("terminal.list")  # the daemon is up and answering
        self.assertEqual([t["name"] for t in info["terminals"]], ["till-1"])
        self.assertTrue(self.daemon.alive)

        os.remove(filler)  # store IT frees some space
        again = yield proto.call("payment.start", dict(PAYMENT, amount=555), message_id="while-full")
        self.assertEqual(again["state"], "accepted")  # nothing had been recorded: the same id now starts it
        payment = yield self.until(lambda: self.final_events(proto, again["id"]), "the payment's end")
        self.assertEqual(payment[0]["payment"]["state"], "approved")
        self.assertEqual(len(self.simulator.requests), 2)
        self.assertIn(b"CB003555", self.simulator.requests[1])


#: Makes the state directory ($1) a read-only bind mount in a private mount namespace, then runs the daemon.
_READ_ONLY_THEN_RUN = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'


class ReadOnlyDiskTests(_Bridge, TestCase):
    """The real daemon started with its journal on a read-only disk (what an SD card looks like after the
    kernel protected it from errors): it stays up, answers, refuses payments with journal_unavailable and
    sends nothing.  Needs root and `unshare -m`; skipped where those are not available."""

    timeout = 30

    @inlineCallbacks
    def setUp(self):
        if not _can_mount_tmpfs():
            raise SkipTest("needs root and `unshare -m` to make a read-only mount")
        self.simulator, terminal = yield start_simulator(self, reactor)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        port = free_port()
        path = write_config(directory, {"till-1": terminal}, port=port)
        creds = add_test_client(path, "pos")
        self.creds = Credentials(creds["client_id"], creds["secret_in"], creds["secret_out"])
        self.url = f"wss://127.0.0.1:{port}"
        # A first run makes the key, the certificate and the journal.
        config = load_config(path)
        first = Daemon(config, reactor)
        yield first.start()
        with open(config.tls_certificate, "rb") as f:
            self.fingerprint = fingerprint_of_pem(f.read())
        yield first.stop()
        state = os.path.join(directory, "state")
        self.daemon = DaemonProcess.spawn(
            reactor, path, prefix=["unshare", "-m", "--propagation", "private", "sh", "-c", _READ_ONLY_THEN_RUN,
                                   "sh", state])
        self.addCleanup(self.daemon.kill)
        yield self.daemon.ready

    @inlineCallbacks
    def test_a_read_only_disk_at_start_refuses_payments_and_the_daemon_serves_on(self):
        proto = yield self.open()
        try:
            yield proto.call("payment.start", PAYMENT, message_id="on-read-only")
        except BridgeError as e:
            error = e
        else:
            self.fail("a payment was accepted on a read-only disk")
        self.assertEqual(error.code, "journal_unavailable")
        self.assertIn("read-only", error.message)
        self.assertEqual(self.simulator.requests, [])
        info = yield proto.call("terminal.list")
        self.assertEqual([t["name"] for t in info["terminals"]], ["till-1"])
        self.assertTrue(self.daemon.alive)
