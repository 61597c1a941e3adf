"""Reload (SIGHUP, `systemctl reload`): clients and uplinks are re-read, terminals and payments in flight are not
touched; a configuration that does not load leaves the bridge as it was."""

import os
import sys

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import Clock, deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from bridge.api.client import connect
from bridge.api.signing import new_secret
from bridge.api.tls import ensure_certificate, fingerprint_of_pem
from bridge.errors import BridgeError
from bridge.terminals.caisse_ap.simulator import SimulatorFactory, SimulatorScript
from bridge.uplink import bus as bus_module
from tests.daemon_process import REPO, DaemonProcess, free_port
from tests.fake_odoo import FakeOdoo, make_private_ca
from tests.support import add_test_client, credentials_of, start_daemon, start_simulator, write_config

PAYMENT = {"terminal": "till-1", "amount": 1234, "currency": "EUR"}
TOKEN = "feedc0de0123456789abcdef"


def sleep(seconds):
    return deferLater(reactor, seconds, lambda: None)


@inlineCallbacks
def wait_for(condition, timeout=15.0, step=0.05):
    for _ in range(int(timeout / step)):
        if condition():
            return
        yield sleep(step)
    raise AssertionError(f"condition not met within {timeout} s")


def new_odoo(database="shop"):
    return FakeOdoo(reactor, database, "terminal_bridge-" + TOKEN, "cl_paired_" + database, new_secret(),
                    new_secret(), "Feedback-Passphrase-" + new_secret()[:20])


class PairWhilePaying(TestCase):
    """The real daemon in its own process, paired by the real command while a payment is in flight."""

    timeout = 60

    @inlineCallbacks
    def setUp(self):
        # The terminal answers when the test advances this clock: the payment stays in flight as long as needed.
        self.terminal_clock = Clock()
        self.simulator = SimulatorFactory(self.terminal_clock, SimulatorScript(delay=1.0))
        listening = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(self.simulator)
        self.addCleanup(listening.stopListening)
        self.addCleanup(self.simulator.drop_connections)
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.dir, "tls"))
        cert, key = os.path.join(self.dir, "tls", "bridge.crt"), os.path.join(self.dir, "tls", "bridge.key")
        ensure_certificate(cert, key)
        with open(cert, "rb") as f:
            self.fingerprint = fingerprint_of_pem(f.read())
        port = free_port()
        self.url = f"wss://127.0.0.1:{port}"
        self.config_path = os.path.join(self.dir, "bridge.conf")
        with open(self.config_path, "w") as f:
            f.write(f"# the shop's bridge\n[bridge]\nlisten = 127.0.0.1:{port}\nstate_dir = state\n"
                    f"tls_certificate = {cert}\ntls_key = {key}\n\n[terminal:till-1]\ntype = caisse-ap-tcp\n"
                    f"address = 127.0.0.1:{listening.getHost().port}\nanswer_timeout = 120\n")
        self.pos = credentials_of(add_test_client(self.config_path, "pos"))
        self.tls = make_private_ca(self.dir, "odoo")
        self.odoo = new_odoo()
        odoo_port = yield self.odoo.listen(self.tls["cert"], self.tls["key"])
        self.addCleanup(odoo_port.stopListening)
        self.addCleanup(self.odoo.stop)
        self.odoo_url = f"https://127.0.0.1:{odoo_port.getHost().port}"
        self.daemon = DaemonProcess.spawn(reactor, self.config_path)
        self.addCleanup(self.daemon.kill)
        yield self.daemon.ready

    @inlineCallbacks
    def lan(self):
        factory, opened = connect(reactor, self.url, self.pos, fingerprint=self.fingerprint)
        proto = yield opened
        self.addCleanup(lambda: (proto.sendClose(), factory.closed)[1])
        yield proto.call("hello", {"client": self.pos.client_id})
        return proto

    def pair(self):
        env = {k: v for k, v in os.environ.items() if k != "TERMINAL_BRIDGE_CONFIG"}
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        argv = ["-m", "bridge", "-c", self.config_path, "uplink", "pair", self.odoo_url,
                self.odoo.new_pairing_code(), "--database", "shop", "--ca-file", self.tls["ca"]]
        return getProcessOutputAndValue(sys.executable, argv, env=env, path=REPO)

    @inlineCallbacks
    def test_pairing_reloads_the_running_bridge_and_the_payment_in_flight_ends_approved(self):
        pid = self.daemon.transport.pid
        proto = yield self.lan()
        payment = yield proto.call("payment.start", PAYMENT, message_id="in-flight-1")
        yield wait_for(lambda: self.simulator.requests)  # the request is at the terminal
        out, err, code = yield self.pair()
        self.assertEqual(code, 0, err)
        self.assertIn(f"The bridge (pid {pid}) was asked to reload".encode(), out)
        # The new uplink runs: it fetches, subscribes to the bus and runs what Odoo queued, as the paired client.
        yield wait_for(lambda: self.odoo.pending_requests and self.odoo.subscriptions)
        command = self.odoo.queue_command("terminal.list", {})
        yield wait_for(lambda: any(a["command_id"] == command for a in self.odoo.acks))
        ack = [a for a in self.odoo.acks if a["command_id"] == command][0]
        self.assertTrue(ack["reply"]["ok"], ack)
        self.assertTrue(ack["reply_signed"])
        self.assertIn(b"Configuration reloaded: 2 client(s), 1 uplink(s)", bytes(self.daemon.output))
        # The terminal answers only now: the payment started before the reload ends approved.
        self.assertEqual(len(self.simulator.requests), 1)
        self.terminal_clock.advance(1.0)
        view = {}

        @inlineCallbacks
        def approved():
            view.update((yield proto.call("payment.get", {"payment_id": payment["id"]})))
            return view["state"] == "approved"

        for _ in range(200):
            if (yield approved()):
                break
            yield sleep(0.05)
        self.assertEqual(view["state"], "approved")
        self.assertTrue(self.daemon.alive)
        self.assertEqual(self.daemon.transport.pid, pid)


class LogCatcher:
    def __init__(self, test):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        test.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def texts(self):
        from twisted.logger import formatEvent

        return [formatEvent(e) for e in self.events]


class ReloadInProcess(TestCase):
    """Daemon.reload on the real daemon in this process, against fake Odoos over real TLS."""

    timeout = 30

    @inlineCallbacks
    def setUp(self):
        self.patch(bus_module, "STABLE_AFTER", 0.0)
        self.simulator, self.terminal = yield start_simulator(self, reactor)
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.config_path = write_config(self.dir, {"till-1": self.terminal})
        with open(self.config_path) as f:
            self.base_text = f.read()
        self.tls = make_private_ca(self.dir, "odoo")
        self.odoos = {}
        for database in ("shop", "other"):
            odoo = new_odoo(database)
            port = yield odoo.listen(self.tls["cert"], self.tls["key"])
            self.addCleanup(port.stopListening)
            self.addCleanup(odoo.stop)
            odoo.url = f"https://127.0.0.1:{port.getHost().port}"
            self.odoos[database] = odoo
        self.logs = LogCatcher(self)

    def write(self, *databases, extra=""):
        """bridge.conf with an uplink (and its client) per database."""
        from bridge.config import add_client

        text = self.base_text + extra
        for database in databases:
            odoo = self.odoos[database]
            secrets = os.path.join(self.dir, f"{database}.secrets")
            fd = os.open(secrets, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(f"channel_token = {TOKEN}\nfeedback_secret = {odoo.feedback_secret}\n")
            add_client(os.path.join(self.dir, "clients.conf"), f"odoo-{database}", odoo.client_id, odoo.secret_in,
                       odoo.secret_out, ("pay", "read"), replace=True)
            text += (f"[uplink:odoo-{database}]\nurl = {odoo.url}\ndatabase = {database}\nclient = odoo-{database}\n"
                     f"secrets_file = {secrets}\nca_file = {self.tls['ca']}\n")
        with open(self.config_path, "w") as f:
            f.write(text)

    def names(self, daemon):
        return sorted(s.uplink.name for s in daemon.uplinks.services) if daemon.uplinks else []

    @inlineCallbacks
    def test_uplinks_are_added_changed_and_removed_and_the_others_left_running(self):
        self.write("shop")
        daemon, url, fingerprint = yield start_daemon(self, self.config_path, reactor)
        shop = daemon.uplinks.services[0]
        yield wait_for(lambda: self.odoos["shop"].sockets)
        self.write("shop", "other")
        self.assertTrue((yield daemon.reload()))
        self.assertEqual(self.names(daemon), ["odoo-other", "odoo-shop"])
        self.assertIs(daemon.uplinks.services[0], shop)  # unchanged: not restarted
        yield wait_for(lambda: self.odoos["other"].sockets and self.odoos["other"].pending_requests)
        self.odoos["shop"].rotate_secrets()  # a new pairing: the shop's uplink restarts with its new secrets
        self.write("shop", "other")
        yield daemon.reload()
        restarted = [s for s in daemon.uplinks.services if s.uplink.name == "odoo-shop"][0]
        self.assertIsNot(restarted, shop)
        self.assertEqual(restarted.client.secret_in, self.odoos["shop"].secret_in)
        command = self.odoos["shop"].queue_command("terminal.list", {})
        yield wait_for(lambda: any(a["command_id"] == command and a["reply_signed"] for a in self.odoos["shop"].acks))
        self.write("other")
        yield daemon.reload()
        self.assertEqual(self.names(daemon), ["odoo-other"])
        self.assertEqual(shop.bus.state, "stopped")
        self.assertEqual(restarted.bus.state, "stopped")
        yield wait_for(lambda: not self.odoos["shop"].sockets)

    @inlineCallbacks
    def test_a_new_client_is_let_in_without_a_restart(self):
        daemon, url, fingerprint = yield start_daemon(self, self.config_path, reactor)
        newcomer = credentials_of(add_test_client(self.config_path, "newcomer"))

        @inlineCallbacks
        def hello():
            factory, opened = connect(reactor, url, newcomer, fingerprint=fingerprint)
            proto = yield opened
            self.addCleanup(lambda: (proto.sendClose(), factory.closed)[1])
            yield proto.call("hello", {"client": newcomer.client_id})

        with self.assertRaises(BridgeError) as e:
            yield hello()
        self.assertEqual(e.exception.code, "unknown_client")
        yield daemon.reload()
        yield hello()

    @inlineCallbacks
    def test_a_configuration_that_does_not_load_changes_nothing(self):
        self.write("shop")
        daemon, url, fingerprint = yield start_daemon(self, self.config_path, reactor)
        before = daemon.config
        with open(self.config_path, "a") as f:
            f.write("[uplink:broken]\nurl = http://plain.example.com\n")
        self.assertFalse((yield daemon.reload()))
        self.assertIs(daemon.config, before)
        self.assertEqual(self.names(daemon), ["odoo-shop"])
        text = "\n".join(self.logs.texts())
        self.assertIn("The configuration was not reloaded, the bridge keeps the one it had", text)
        self.assertIn("[uplink:broken] url", text)

    @inlineCallbacks
    def test_changed_terminals_are_logged_as_needing_a_restart_and_left_alone(self):
        daemon, url, fingerprint = yield start_daemon(self, self.config_path, reactor)
        registry = daemon.payments.registry
        with open(self.config_path, "a") as f:
            f.write(f"[terminal:till-2]\ntype = caisse-ap-tcp\naddress = {self.terminal}\n")
        self.assertTrue((yield daemon.reload()))
        self.assertEqual(list(registry.names()), ["till-1"])
        self.assertEqual(list(daemon.config.terminals), ["till-1"])
        text = "\n".join(self.logs.texts())
        self.assertIn("Changed settings that only a restart applies", text)
        self.assertIn(": terminals", text)
