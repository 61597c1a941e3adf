"""The whole path over real sockets: TLS WebSocket client -> bridge -> TCP -> Caisse-AP simulator -> event back."""

import os

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase

from bridge.api.client import Credentials, connect
from bridge.errors import BridgeError
from bridge.terminals.caisse_ap.simulator import SimulatorScript
from tests.support import add_test_client, credentials_of, start_daemon, start_simulator, write_config

PAYMENT = {"terminal": "till-1", "amount": 1234, "currency": "EUR"}


class EndToEndTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def setUp(self):
        self.simulator, approver = yield start_simulator(self, reactor)
        self.decliner, decliner = yield start_simulator(self, reactor, SimulatorScript(outcome="decline", af="05"))
        directory = self.mktemp()
        os.makedirs(directory)
        path = write_config(directory, {"till-1": approver, "till-2": decliner},
                            extra="max_message_bytes = 4096")
        self.creds = credentials_of(add_test_client(path, "pos"))
        self.daemon, self.url, self.fingerprint = yield start_daemon(self, path, reactor)

    @inlineCallbacks
    def open(self, creds=None, hello=True):
        factory, opened = connect(reactor, self.url, creds or self.creds, fingerprint=self.fingerprint)
        proto = yield opened
        events = []
        factory.on_event = events.append
        proto.events = events
        self.addCleanup(self._close, proto, factory)
        if hello:
            yield proto.call("hello", {"client": (creds or self.creds).client_id})
        return proto

    def _close(self, proto, factory):
        if proto.state != proto.STATE_CLOSED:
            proto.sendClose()
            return factory.closed
        return None

    @inlineCallbacks
    def final_event(self, proto, payment_id):
        for _ in range(300):
            finals = [e for e in proto.events if e["payment"]["id"] == payment_id and e["payment"]["final"]]
            if finals:
                return finals[0]["payment"]
            yield sleep(0.02)
        self.fail(f"no final event for {payment_id}: {proto.events}")

    @inlineCallbacks
    def refused(self, proto, op, args, message_id=None):
        try:
            yield proto.call(op, args, message_id=message_id)
        except BridgeError as e:
            return e.code
        self.fail(f"{op} {args} was not refused")

    @inlineCallbacks
    def test_an_approved_payment_end_to_end(self):
        proto = yield self.open()
        started = yield proto.call("payment.start", PAYMENT)
        self.assertEqual(started["state"], "accepted")
        payment = yield self.final_event(proto, started["id"])
        self.assertEqual(payment["state"], "approved")
        self.assertTrue(payment["details"]["authorisation"])
        self.assertRegex(payment["details"]["card_masked"], r"^\d{6}#+\d{4}$")
        self.assertEqual(len(self.simulator.requests), 1)
        self.assertIn(b"CB0041234", self.simulator.requests[0])
        states = [e["payment"]["state"] for e in proto.events]
        self.assertEqual(states, ["accepted", "in_progress", "approved"])

    @inlineCallbacks
    def test_a_declined_payment_end_to_end(self):
        proto = yield self.open()
        started = yield proto.call("payment.start", dict(PAYMENT, terminal="till-2"))
        payment = yield self.final_event(proto, started["id"])
        self.assertEqual(payment["state"], "declined")
        self.assertEqual(payment["reason"]["code"], "card_forbidden")

    @inlineCallbacks
    def test_every_refused_command_has_its_code_and_sends_nothing(self):
        proto = yield self.open()
        cases = [
            ("unknown_terminal", dict(PAYMENT, terminal="till-9")),
            ("invalid_amount", dict(PAYMENT, amount=0)),
            ("invalid_amount", dict(PAYMENT, amount=-100)),
            ("invalid_amount", dict(PAYMENT, amount=12.34)),
            ("invalid_amount", dict(PAYMENT, amount=1234567890123)),
            ("unknown_currency", dict(PAYMENT, currency="ABC")),
        ]
        for code, args in cases:
            got = yield self.refused(proto, "payment.start", args)
            self.assertEqual(got, code, args)
        self.assertEqual(self.simulator.requests, [])

    @inlineCallbacks
    def test_bad_signature_malformed_json_and_oversize_frames(self):
        proto = yield self.open()
        replies = []
        proto.factory.on_unsolicited = replies.append
        proto.send_raw(b"{not json")
        proto.send_raw({"id": "x1", "op": "payment.start", "ts": 0, "args": PAYMENT, "sig": "00"})
        # a text frame that is not UTF-8 gets bad_json like any other unreadable message, and the
        # connection stays open (autobahn's own check would close it with 1007 instead)
        proto.send_raw(b'{"id": "x2", "op": "\xff\xfe"}')
        yield sleep(0.2)
        self.assertEqual([r["error"]["code"] for r in replies], ["bad_json", "bad_signature", "bad_json"])
        self.assertEqual(self.simulator.requests, [])
        info = yield proto.call("bridge.info", {})
        self.assertIn("version", info)
        # a well-formed command with a wrong signature
        creds = Credentials(self.creds.client_id, "x" * 64, self.creds.secret_out)
        other = yield self.open(creds, hello=False)
        code = yield self.refused(other, "hello", {"client": self.creds.client_id})
        self.assertEqual(code, "bad_signature")
        # an oversize frame gets its error, then the connection is closed
        big = yield self.open()
        pending = big.call("payment.start", dict(PAYMENT, note="x" * 5000))
        big_replies = []
        big.factory.on_unsolicited = big_replies.append
        yield big.factory.closed
        self.assertEqual([r["error"]["code"] for r in big_replies], ["message_too_large"])
        yield self.assertFailure(pending, BridgeError)
        self.assertEqual(self.simulator.requests, [])

    @inlineCallbacks
    def test_unknown_client(self):
        creds = Credentials("cl_stranger", "s" * 64, "t" * 64)
        proto = yield self.open(creds, hello=False)
        code = yield self.refused(proto, "hello", {"client": "cl_stranger"})
        self.assertEqual(code, "unknown_client")

    @inlineCallbacks
    def test_a_client_pinning_another_certificate_cannot_connect(self):
        _, opened = connect(reactor, self.url, self.creds, fingerprint="AB" * 32)
        yield self.assertFailure(opened, Exception)

    @inlineCallbacks
    def test_a_connection_without_the_subprotocol_is_refused(self):
        from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
        from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS

        from bridge.api.tls import PinnedCertificateCreator

        closed = Deferred()

        class Probe(WebSocketClientProtocol):
            def onOpen(self):
                closed.callback("opened")

            def onClose(self, wasClean, code, reason):
                if not closed.called:
                    closed.callback(reason)

        factory = WebSocketClientFactory(self.url)
        factory.protocol = Probe
        port = self.daemon.port.getHost().port
        endpoint = wrapClientTLS(PinnedCertificateCreator(self.fingerprint, "127.0.0.1"),
                                 HostnameEndpoint(reactor, "127.0.0.1", port))
        yield endpoint.connect(factory)
        result = yield closed
        self.assertNotEqual(result, "opened")

    @inlineCallbacks
    def test_the_same_command_id_twice_on_two_connections_is_one_payment(self):
        a = yield self.open()
        b = yield self.open()
        first, second = yield _both(a.call("payment.start", PAYMENT, message_id="dup-1"),
                                    b.call("payment.start", PAYMENT, message_id="dup-1"))
        self.assertEqual(first["id"], second["id"])
        yield self.final_event(a, first["id"])
        self.assertEqual(len(self.simulator.requests), 1)


def sleep(seconds):
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)


def _both(a, b):
    from twisted.internet.defer import gatherResults

    return gatherResults([a, b])
