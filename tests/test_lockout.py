"""Nobody without a secret can keep the tills out (issue 13, item 1): hello deadline, a cap per peer address,
slots kept for clients that logged in, one log line per offender.  Real sockets for the attack; a Clock for the
deadline."""

import os

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from bridge.api.admission import HELLO_DEADLINE, PENDING_PER_ADDRESS, Admission, reserved_slots
from bridge.api.client import ClientFactory, Credentials, connect
from bridge.api.session import Bridge
from bridge.api.tls import PinnedCertificateCreator
from bridge.api.websocket import CommandFactory
from bridge.core.journal import Journal
from bridge.core.payments import PaymentService
from bridge.core.registry import TerminalRegistry
from tests.support import (RecordingDriver, add_test_client, credentials_of, load_config, start_daemon,
                           start_simulator, write_config)


class _Held(Protocol):
    """A bare TCP connection that says nothing; ``lost`` fires when the bridge closes it."""

    def __init__(self) -> None:
        self.lost: Deferred = Deferred()

    def connectionLost(self, reason=None):
        self.lost.callback(None)


class LockOutOverRealSocketsTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def setUp(self):
        self.simulator, approver = yield start_simulator(self, reactor)
        directory = self.mktemp()
        os.makedirs(directory)
        path = write_config(directory, {"till-1": approver})
        self.creds = credentials_of(add_test_client(path, "pos"))
        self.daemon, self.url, self.fingerprint = yield start_daemon(self, path, reactor)
        self.port = int(self.url.rsplit(":", 1)[1])
        # This machine has no other addresses than its loopback ones, which the bridge trusts (nobody on the
        # shop network can send from them): here they stand for the shop network's addresses.
        self._admission().exempt = lambda address: False
        self.warnings = []

        def observe(event):
            if event.get("log_namespace") == "bridge.api.admission.Admission":
                self.warnings.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def endpoint(self, source):
        return TCP4ClientEndpoint(reactor, "127.0.0.1", self.port, timeout=5, bindAddress=(source, 0))

    @inlineCallbacks
    def bare_sockets(self, source, count):
        held = []
        for _ in range(count):
            protocol = _Held()
            yield self.endpoint(source).connect(Factory.forProtocol(lambda p=protocol: p))
            held.append(protocol)
            self.addCleanup(self.drop, protocol.transport, protocol.lost)
        return held

    def closed_by_bridge(self, held, count):
        """Fires once ``count`` of the ``held`` sockets were closed by the bridge (else the test times out)."""
        done = Deferred()
        closed = []

        def lost(_):
            closed.append(1)
            if len(closed) == count:
                done.callback(None)

        for protocol in held:
            protocol.lost.addCallback(lost)
        return done

    def silent_websocket(self, source):
        """A WebSocket that completes the handshake, answers pings, and never says hello."""
        factory = ClientFactory(self.url, Credentials("cl_nobody", "0" * 64, "0" * 64))
        tls = wrapClientTLS(PinnedCertificateCreator(self.fingerprint, "127.0.0.1"), self.endpoint(source))
        connecting = tls.connect(factory)
        connecting.addCallback(lambda p: self.addCleanup(self.drop, p.transport, factory.closed))
        connecting.addErrback(lambda f: None)
        return factory.opened

    @staticmethod
    def drop(transport, lost):
        if not lost.called:
            transport.abortConnection()
        return lost

    @inlineCallbacks
    def test_silent_sockets_from_many_addresses_do_not_keep_a_till_from_paying(self):
        self.addCleanup(self.server_side_closed)
        # 70 bare TCP sockets from one address: all but its share are closed at once
        held = yield self.bare_sockets("127.0.0.2", 70)
        yield self.closed_by_bridge(held, 70 - PENDING_PER_ADDRESS)
        # 64 WebSockets that never say hello, from 9 addresses: as many as there are slots
        opened = yield DeferredList([self.silent_websocket(f"127.0.0.{10 + i % 9}") for i in range(64)],
                                    consumeErrors=True)
        self.assertTrue(any(ok for ok, _ in opened))
        # a till from its own address still connects, logs in and pays
        factory, connecting = connect(reactor, self.url, self.creds, fingerprint=self.fingerprint)
        till = yield connecting
        self.addCleanup(lambda: till.sendClose() or factory.closed)
        events = []
        factory.on_event = events.append
        yield till.call("hello", {"client": self.creds.client_id})
        payment = yield till.call("payment.start", {"terminal": "till-1", "amount": 1234, "currency": "EUR"})
        for _ in range(500):
            if any(e["payment"]["id"] == payment["id"] and e["payment"]["final"] for e in events):
                break
            yield deferLater(reactor, 0.01, lambda: None)
        finals = [e["payment"]["state"] for e in events if e["payment"]["id"] == payment["id"] and e["payment"]["final"]]
        self.assertEqual(finals, ["approved"])
        # one warning per offending address, naming it, however many of its sockets were refused
        warned = [e["peer"] for e in self.warnings if e["log_level"].name == "warn"]
        self.assertEqual(warned.count("127.0.0.2"), 1)
        self.assertEqual(sorted(set(warned)), sorted(warned))

    def _factory(self):
        return self.daemon.port.factory.wrappedFactory

    def _admission(self):
        return self.daemon.port.factory.wrappedFactory.admission

    def _pending(self):
        admission = getattr(self._factory(), "admission", None)
        return admission.pending if admission is not None else 0

    @inlineCallbacks
    def server_side_closed(self):
        """Wait for the bridge to see the close of every connection the test dropped (its timers go too)."""
        while self._factory().countConnections or self._pending():
            yield deferLater(reactor, 0.01, lambda: None)


class _Transport(StringTransport):
    def setTcpNoDelay(self, enabled):
        pass


class HelloDeadlineTests(SynchronousTestCase):
    def setUp(self):
        directory = self.mktemp()
        os.makedirs(directory)
        path = write_config(directory, {"till-1": "127.0.0.1:9"})
        self.clock = Clock()
        journal = Journal.open(os.path.join(directory, "j.sqlite3"), threaded=False)
        self.addCleanup(journal.close)
        payments = PaymentService(journal, TerminalRegistry([RecordingDriver("till-1")]), self.clock)
        self.factory = CommandFactory(Bridge(load_config(path), payments, self.clock), "wss://127.0.0.1:8443")
        # autobahn's own handshake timer runs on the global reactor, not on this Clock: not wanted here
        self.factory.setProtocolOptions(openHandshakeTimeout=0)

    def connection(self, host="10.0.0.5"):
        protocol = self.factory.buildProtocol(IPv4Address("TCP", host, 40000))
        transport = _Transport(peerAddress=IPv4Address("TCP", host, 40000))
        protocol.makeConnection(transport)
        return protocol, transport

    def test_a_connection_without_hello_is_dropped_at_the_deadline(self):
        protocol, transport = self.connection()
        self.clock.advance(HELLO_DEADLINE - 0.5)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)

    def test_a_connection_that_said_hello_is_not_dropped(self):
        protocol, transport = self.connection()
        protocol._logged_in()
        self.clock.advance(HELLO_DEADLINE * 10)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(self.factory.admission.pending, 0)

    def test_an_address_over_its_share_is_closed_at_once(self):
        for _ in range(PENDING_PER_ADDRESS):
            self.assertFalse(self.connection()[1].disconnecting)
        self.assertTrue(self.connection()[1].disconnecting)
        self.assertFalse(self.connection("10.0.0.6")[1].disconnecting)


class AdmissionTests(SynchronousTestCase):
    def test_the_last_slots_are_kept_for_clients_that_logged_in(self):
        admission = Admission(64, Clock(), per_address=64)
        self.assertEqual(admission.max_pending, 64 - reserved_slots(64))
        for token in range(admission.max_pending):
            self.assertTrue(admission.admit("10.0.0.1", token, lambda: None))
        self.assertFalse(admission.admit("10.0.0.1", 999, lambda: None))

    def test_a_newcomer_takes_the_oldest_slot_of_the_biggest_holder(self):
        admission = Admission(8, Clock(), per_address=8)  # 6 pending slots
        dropped = []
        for token in range(5):
            admission.admit("10.0.0.1", token, lambda t=token: dropped.append(t))
        admission.admit("10.0.0.2", 10, lambda: dropped.append(10))
        self.assertTrue(admission.admit("10.0.0.3", 20, lambda: dropped.append(20)))
        self.assertEqual(dropped, [0])
        self.assertEqual((admission.pending_from("10.0.0.1"), admission.pending), (4, 6))

    def test_an_offender_is_logged_once_with_its_address_then_summed_up_once_quiet(self):
        from twisted.logger import globalLogPublisher

        from bridge.api.admission import QUIET

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        clock = Clock()
        admission = Admission(64, clock, per_address=2)
        for token in range(500):  # a device opening and abandoning connections, failing TLS, signing badly
            if admission.admit("10.0.0.9", token, lambda: None):
                admission.hello_overdue("10.0.0.9") if token % 2 else admission.offence("10.0.0.9", "tls", "x")
                admission.gone("10.0.0.9", token)
            admission.offence("10.0.0.9", "bad_signature", "client cl_pos")
            clock.advance(0.1)
        mine = [e for e in events if e.get("peer") == "10.0.0.9"]
        self.assertEqual([e["log_level"].name for e in mine], ["warn"])
        clock.advance(QUIET)
        mine = [e for e in events if e.get("peer") == "10.0.0.9"]
        self.assertEqual([e["log_level"].name for e in mine], ["warn", "info"])
        self.assertEqual((mine[1]["count_bad_signature"], mine[1]["count_dropped"] + mine[1]["count_tls"]),
                         (500, 500))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_the_bridges_own_machine_is_not_capped(self):
        admission = Admission(64, Clock(), per_address=2)
        for token in range(60):
            self.assertTrue(admission.admit("127.0.0.1", token, lambda: None))
            self.assertTrue(admission.admit("::1", 100 + token, lambda: None))
        self.assertEqual(admission.pending, 0)
        self.assertTrue(admission.admit("10.0.0.1", 1000, lambda: None))
        self.assertTrue(admission.admit("10.0.0.1", 1001, lambda: None))
        self.assertFalse(admission.admit("10.0.0.1", 1002, lambda: None))
