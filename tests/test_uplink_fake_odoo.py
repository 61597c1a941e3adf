"""The fake Odoo itself behaves as protocols/odoo-bus.md says Odoo does, so the uplink tests mean something."""

import json

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from bridge.uplink.bus import session_cookie
from bridge.uplink.https import HTTPS, TLSPolicy
from tests.fake_odoo import FakeOdoo, make_private_ca

CHANNEL = "terminal_bridge-0123456789abcdef"


class Probe(WebSocketClientProtocol):
    def onOpen(self):
        self.factory.proto = self
        self.factory.opened.callback(self)

    def onMessage(self, payload, isBinary):
        self.factory.messages.append(json.loads(payload))

    def onPing(self, payload):
        self.factory.pings += 1
        super().onPing(payload)

    def onClose(self, wasClean, code, reason):
        if not self.factory.opened.called:
            self.factory.opened.errback(Exception(reason))
        if not self.factory.closed.called:
            self.factory.closed.callback((code, reason))


class FakeOdooTests(TestCase):
    timeout = 10

    @inlineCallbacks
    def setUp(self):
        directory = self.mktemp()
        self.tls = make_private_ca(directory)
        self.odoo = FakeOdoo(reactor, "shop", CHANNEL, "cl_odoo", "i" * 64, "o" * 64, "f" * 20)
        self.port = yield self.odoo.listen(self.tls["cert"], self.tls["key"])
        self.addCleanup(self.port.stopListening)
        self.addCleanup(self.odoo.stop)
        self.policy = TLSPolicy(self.tls["ca"])
        self.https = HTTPS(reactor, self.policy, timeout=5)
        self.addCleanup(self.https.close)
        self.base = f"https://127.0.0.1:{self.port.getHost().port}"

    @inlineCallbacks
    def cookie(self):
        response = yield self.https.request("GET", self.base + "/web/login?db=shop")
        self.assertEqual(response.code, 303)
        return session_cookie(response.header("Set-Cookie"))

    @inlineCallbacks
    def connect(self, cookie=None, origin=True, useragent="terminal-bridge/test", url_suffix=""):
        port = self.port.getHost().port
        headers = {"Cookie": f"session_id={cookie}"} if cookie else {}
        factory = WebSocketClientFactory(f"wss://127.0.0.1:{port}/websocket{url_suffix}",
                                         origin=self.base if origin else None, useragent=useragent,
                                         headers=headers, reactor=reactor)
        factory.protocol = Probe
        factory.opened, factory.closed = Deferred(), Deferred()
        factory.messages, factory.pings, factory.proto = [], 0, None
        endpoint = wrapClientTLS(self.policy.creatorForNetloc(b"127.0.0.1", port),
                                 HostnameEndpoint(reactor, "127.0.0.1", port))
        yield endpoint.connect(factory)
        self.addCleanup(self._close, factory)
        return factory

    def _close(self, factory):
        if not factory.closed.called and factory.proto is not None:
            factory.proto.dropConnection(abort=True)
            return factory.closed
        return None

    def subscribe(self, proto, last=0):
        proto.sendMessage(json.dumps({"event_name": "subscribe",
                                      "data": {"channels": [CHANNEL], "last": last,
                                               "check_outdated": False}}).encode())

    @inlineCallbacks
    def test_no_origin_is_refused_with_400(self):
        cookie = yield self.cookie()
        factory = yield self.connect(cookie, origin=False)
        yield self.assertFailure(factory.opened, Exception)
        self.assertEqual(self.odoo.handshakes[-1]["outcome"], 400)

    @inlineCallbacks
    def test_no_session_cookie_finds_no_database(self):
        factory = yield self.connect(None)
        yield self.assertFailure(factory.opened, Exception)
        self.assertEqual(self.odoo.handshakes[-1]["outcome"], 404)

    @inlineCallbacks
    def test_a_subscription_gets_batches_and_replays_after_its_last_id(self):
        first = self.odoo.notify("terminal_bridge/command", {"n": 1})
        second = self.odoo.notify("terminal_bridge/command", {"n": 2})
        self.odoo.notify("terminal_bridge/command", {"n": 0}, channel="someone-else")
        cookie = yield self.cookie()
        factory = yield self.connect(cookie)
        proto = yield factory.opened
        self.subscribe(proto, last=first)
        yield deferLater(reactor, 0.1, lambda: None)
        self.assertEqual([[n["id"] for n in batch] for batch in factory.messages], [[second]])
        third = self.odoo.notify("terminal_bridge/command", {"n": 3})
        yield deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(factory.messages[-1], [{"id": third, "message": {"type": "terminal_bridge/command",
                                                                          "payload": {"n": 3}}}])

    @inlineCallbacks
    def test_last_zero_replays_only_the_last_fifty_seconds_and_old_rows_are_collected(self):
        old = self.odoo.notify("terminal_bridge/command", {})
        recent = self.odoo.notify("terminal_bridge/command", {})
        self.odoo.notifications[0].created -= 60
        cookie = yield self.cookie()
        factory = yield self.connect(cookie)
        proto = yield factory.opened
        self.subscribe(proto, last=0)
        yield deferLater(reactor, 0.1, lambda: None)
        self.assertEqual([n["id"] for n in factory.messages[0]], [recent])
        self.odoo.notifications[0].created -= 100
        self.odoo.gc()
        self.assertNotIn(old, [n.id for n in self.odoo.notifications])

    @inlineCallbacks
    def test_lost_and_late_notifications(self):
        cookie = yield self.cookie()
        factory = yield self.connect(cookie)
        proto = yield factory.opened
        self.subscribe(proto)
        yield deferLater(reactor, 0.1, lambda: None)
        self.odoo.notify("terminal_bridge/command", {}, lost=True)
        late = self.odoo.notify("terminal_bridge/command", {}, held=True)
        later = self.odoo.notify("terminal_bridge/command", {})
        self.odoo.release(late)
        yield deferLater(reactor, 0.1, lambda: None)
        self.assertEqual([n["id"] for batch in factory.messages for n in batch], [later, late])

    @inlineCallbacks
    def test_more_than_ten_frames_in_two_seconds_closes_1013(self):
        cookie = yield self.cookie()
        factory = yield self.connect(cookie)
        proto = yield factory.opened
        for _ in range(12):
            self.subscribe(proto)
        code, _ = yield factory.closed
        self.assertEqual(code, 1013)

    @inlineCallbacks
    def test_a_browser_user_agent_without_the_version_is_outdated(self):
        cookie = yield self.cookie()
        factory = yield self.connect(cookie, useragent="Mozilla/5.0 (X11; Linux x86_64)")
        code, reason = yield factory.closed
        self.assertEqual((code, reason), (1000, "OUTDATED_VERSION"))

    @inlineCallbacks
    def test_the_server_pings_and_expiring_sessions_close_4001(self):
        self.odoo.ping_interval = 0.2  # Odoo's is 45 s of silence
        cookie = yield self.cookie()
        factory = yield self.connect(cookie)
        yield factory.opened
        yield deferLater(reactor, 0.5, lambda: None)
        self.assertGreater(factory.pings, 0)
        self.assertEqual(len(self.odoo.sockets), 1)  # answered with pongs, so kept
        self.odoo.expire_sessions()
        code, _ = yield factory.closed
        self.assertEqual(code, 4001)
        again = yield self.connect(cookie)
        yield self.assertFailure(again.opened, Exception)  # the old cookie leads nowhere

    @inlineCallbacks
    def test_a_hanging_route_is_a_timeout_in_words(self):
        from bridge.errors import BridgeError

        self.odoo.multi_db = False
        self.odoo.pending_hang = True
        quick = HTTPS(reactor, self.policy, timeout=0.2)
        self.addCleanup(quick.close)
        error = yield self.assertFailure(quick.request("POST", self.base + "/terminal_bridge/pending", b"{}"),
                                         BridgeError)
        self.assertIn("no answer from", error.message)

    @inlineCallbacks
    def test_on_a_multi_database_host_the_routes_need_the_database_session(self):
        for path in ("pending", "ack", "feedback"):
            response = yield self.https.request("POST", f"{self.base}/terminal_bridge/{path}", b"{}")
            self.assertEqual(response.code, 404)
        cookie = yield self.cookie()
        response = yield self.https.request("POST", self.base + "/terminal_bridge/pending", b"{}",
                                            headers={"Cookie": f"session_id={cookie}"})
        self.assertEqual(response.code, 403)  # found, and refused for its missing signature

    @inlineCallbacks
    def test_failing_routes_answer_500(self):
        self.odoo.multi_db = False
        self.odoo.pending_status = 500
        response = yield self.https.request("POST", self.base + "/terminal_bridge/pending", b"{}")
        self.assertEqual(response.code, 500)
