"""`terminal-bridge pay` follows its payment across a lost connection (issue #14 item 2).

Real parts: the daemon, TLS, the WebSocket client, the Caisse-AP simulator; a TCP relay between the client and the
bridge stands for the network, so a test can cut the connection (or the whole way to the bridge) at the moment it
chooses.
"""

import os

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.protocols.portforward import ProxyFactory, ProxyServer
from twisted.trial.unittest import TestCase

from bridge.cli.pay import EXIT_APPROVED, EXIT_UNKNOWN, pay
from bridge.terminals.caisse_ap.simulator import SimulatorScript
from tests.support import add_test_client, credentials_of, start_daemon, start_simulator, write_config


class _Relay(ProxyServer):
    def connectionMade(self):
        self.factory.open.append(self)
        if self.factory.frozen:  # taken by the kernel, never answered: the bridge's machine has gone silent
            self.transport.pauseProducing()
            return
        super().connectionMade()


class Relay(ProxyFactory):
    """A TCP relay to the bridge that the test can cut."""

    protocol = _Relay

    def __init__(self, host, port):
        super().__init__(host, port)
        self.open = []
        self.listening = None
        self.frozen = False

    def freeze(self):
        """The bridge goes silent without closing anything (power or network lost): nothing is relayed any more,
        the connections stay open, and new ones are accepted but never answered."""
        self.frozen = True
        for server in self.open:
            server.transport.pauseProducing()
            if server.peer is not None:
                server.peer.transport.pauseProducing()

    def cut(self):
        """Drop every connection through the relay (the bridge and the client each see theirs closed)."""
        for server in self.open:
            server.transport.abortConnection()
        self.open = []

    def close(self):
        """Cut and stop listening: the bridge cannot be reached any more."""
        self.cut()
        return self.listening.stopListening()


class PayFollowsItsPaymentTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def start(self, script):
        self.simulator, address = yield start_simulator(self, reactor, script)
        directory = self.mktemp()
        os.makedirs(directory)
        path = write_config(directory, {"till-1": address})
        self.creds = credentials_of(add_test_client(path, "pos"))
        daemon, url, self.fingerprint = yield start_daemon(self, path, reactor)
        self.addCleanup(self.simulator.drop_connections)  # before the daemon's stop: no payment left waiting
        self.relay = Relay("127.0.0.1", int(url.rsplit(":", 1)[1]))
        self.relay.listening = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(self.relay)
        self.addCleanup(lambda: self.relay.close() if self.relay.listening.connected else None)
        self.url = f"wss://127.0.0.1:{self.relay.listening.getHost().port}"
        self.lines = []

    def pay(self, when_sent=None, timeout=20.0, **options):
        def echo(line):
            self.lines.append(line)
            if line.startswith("Sent to the terminal") and when_sent is not None:
                when_sent()

        return pay(reactor, self.url, self.creds, self.fingerprint, None, "till-1", 1234, "EUR", "debit", "card",
                   "cmd-follow-1", timeout, echo=echo, check="terminal-bridge pay ... --command-id cmd-follow-1",
                   reconnect_delays=options.pop("reconnect_delays", (0.01, 0.05, 0.1)),
                   # autobahn's ping timers outlive their connection by up to a second, which trial would call
                   # a dirty reactor; these tests close connections for real, they need no pings to notice.
                   ping_interval=options.pop("ping_interval", None), **options)

    @inlineCallbacks
    def test_a_lost_connection_is_noticed_and_the_payment_followed_to_its_end(self):
        yield self.start(SimulatorScript(outcome="approve", delay=0.3))
        code = yield self.pay(when_sent=self.relay.cut)
        self.assertEqual(code, EXIT_APPROVED, self.lines)
        self.assertIn("The connection to the bridge was lost: connecting again...", self.lines)
        self.assertTrue(self.lines[-1].startswith("APPROVED: 12.34 EUR"), self.lines)
        self.assertEqual(len(self.simulator.requests), 1)  # the same payment, never a second one
        started = [line for line in self.lines if line.startswith("Payment ")]
        self.assertEqual(len(started), 1, self.lines)

    @inlineCallbacks
    def test_a_bridge_that_cannot_be_reached_again_leaves_the_payment_unknown_with_its_check(self):
        yield self.start(SimulatorScript(outcome="approve", delay=0.3))
        code = yield self.pay(when_sent=self.relay.close)
        self.assertEqual(code, EXIT_UNKNOWN, self.lines)
        payment_id = [line for line in self.lines if line.startswith("Payment ")][0].split()[1]
        unknown = [line for line in self.lines if line.startswith("UNKNOWN: 12.34 EUR.")]
        self.assertEqual(len(unknown), 1, self.lines)
        self.assertIn(payment_id, unknown[0])
        self.assertIn("  terminal-bridge pay ... --command-id cmd-follow-1", self.lines)
        self.assertFalse(any(line.startswith("APPROVED") for line in self.lines))

    @inlineCallbacks
    def test_a_payment_that_does_not_end_in_time_is_unknown_not_an_error(self):
        yield self.start(SimulatorScript(outcome="never"))
        code = yield self.pay(timeout=0.5)
        self.assertEqual(code, EXIT_UNKNOWN, self.lines)
        self.assertTrue(any("did not end within 0.5 s" in line for line in self.lines), self.lines)

    @inlineCallbacks
    def test_a_bridge_gone_silent_is_noticed_by_its_pings_and_given_up_on_within_the_reconnect_time(self):
        # Each attempt to reach a silent bridge waits for an answer that never comes (10 s for the first
        # connection): the attempts must end with the time to reach it again, not after 10 s each.
        # Pings every 2 s: the daemon shares the test's reactor, and a loaded machine can hold a pong back.
        yield self.start(SimulatorScript(outcome="approve", delay=0.5))
        code = yield self.pay(when_sent=self.relay.freeze, ping_interval=2.0, reconnect_within=1.0,
                              reconnect_delays=(0.01, 0.05, 0.1, 0.2, 0.3, 0.5))
        self.assertEqual(code, EXIT_UNKNOWN, self.lines)
        self.assertIn("The connection to the bridge was lost: connecting again...", self.lines)
        unknown = [line for line in self.lines if line.startswith("UNKNOWN: 12.34 EUR.")]
        self.assertEqual(len(unknown), 1, self.lines)
        self.assertIn("cannot be reached again", unknown[0])
        self.assertFalse(any("did not end within" in line for line in self.lines), self.lines)
        yield deferLater(reactor, 1.0, lambda: None)  # a guard: no ping timer of autobahn's left for trial to see
