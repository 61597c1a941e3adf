"""The idle cost of an uplink, on a Clock: with the bus up, at most one HTTPS request every 5 minutes; with the
bus down, the periodic fetch every fetch_interval takes over."""

import json
import os

from twisted.internet.defer import fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from bridge.api.session import Bridge
from bridge.core.journal import Journal
from bridge.core.payments import PaymentService
from bridge.core.registry import TerminalRegistry
from bridge.errors import BridgeError
from bridge.uplink.config import UplinkConfig
from bridge.uplink.https import Response
from bridge.uplink.service import UplinkService
from tests.support import RecordingDriver, add_test_client, load_config, write_config

NOW = 1_700_000_000


class CountingOdoo:
    """Every HTTPS request the uplink makes, with its time; Odoo's answers for an idle shop."""

    def __init__(self, clock):
        self.clock = clock
        self.requests = []

    def request(self, method, url, body=None, content_type=None, headers=None):
        self.requests.append((self.clock.seconds(), url.rsplit("/", 1)[-1]))
        if method == "GET":
            return succeed(Response(303, Headers({b"set-cookie": [b"session_id=s1; Path=/"]}), b""))
        return succeed(Response(200, Headers(), json.dumps({"commands": []}).encode()))

    def close(self):
        return succeed(None)


class FakeProto:
    STATE_OPEN = 3
    state = STATE_OPEN

    def sendMessage(self, payload):
        pass

    def sendClose(self, code=None, reason=None):
        pass

    def dropConnection(self, abort=False):
        pass


class IdleCost(SynchronousTestCase):
    def setUp(self):
        directory = self.mktemp()
        os.makedirs(directory)
        path = write_config(directory, {"till-1": "127.0.0.1:1"})
        add_test_client(path, "odoo")
        config = load_config(path)
        self.clock = Clock()
        self.clock.advance(NOW)
        journal = Journal.open(os.path.join(directory, "journal.sqlite3"), threaded=False, now=self.clock.seconds)
        self.addCleanup(journal.close)
        payments = PaymentService(journal, TerminalRegistry([RecordingDriver("till-1")]), self.clock)
        bridge = Bridge(config, payments, self.clock)
        uplink = UplinkConfig(name="odoo", client="odoo", url="https://odoo.example.com", database="shop",
                              channel_token="t" * 24, feedback_secret="f" * 20, fetch_interval=30)
        self.odoo = CountingOdoo(self.clock)
        self.service = UplinkService(uplink, bridge, self.clock, https=self.odoo)
        self.bus_works = True
        self.service.bus._connect = self.connect
        self.proto = None
        self.successResultOf(self.service.start())

    def connect(self, factory):
        if not self.bus_works:
            return fail(BridgeError("uplink_unreachable", "Odoo answered the bus with an error"))
        self.proto = FakeProto()
        factory.link._proto = self.proto
        factory.link._opened(self.proto)
        return succeed(self.proto)

    def let_pass(self, seconds, pings=True):
        """Let ``seconds`` pass, Odoo pinging the open bus every 45 s as it does."""
        for second in range(int(seconds)):
            self.clock.advance(1)
            if pings and second % 45 == 0 and self.proto is not None:
                self.service.bus._frame(self.proto)

    def since(self, start):
        return [(t - start, what) for t, what in self.odoo.requests if t >= start]

    def test_with_the_bus_up_an_idle_bridge_makes_one_request_every_five_minutes(self):
        self.assertEqual(self.service.bus.state, "open")
        start = self.clock.seconds()
        self.let_pass(3600)
        requests = self.since(start + 1)
        self.assertEqual({what for _, what in requests}, {"pending"})
        times = [t for t, _ in requests]
        self.assertEqual(len(times), 12)
        self.assertTrue(all(b - a >= 300 for a, b in zip(times, times[1:])), times)

    def test_a_bus_reconnection_does_not_add_a_second_periodic_fetch(self):
        self.let_pass(200)
        proto, start = self.proto, self.clock.seconds()
        self.service.bus._closed(proto, 4002, "")  # Odoo's hourly keep-alive close: reconnect and fetch at once
        self.let_pass(600)
        times = [t for t, _ in self.since(start)]
        self.assertEqual(times, [1, 301])  # the fetch of the reconnection, then the next 5 minutes after it

    def test_with_the_bus_down_the_periodic_fetch_runs_every_fetch_interval(self):
        self.bus_works = False
        self.service.bus._closed(self.proto, 1006, "connection lost")
        self.proto = None
        start = self.clock.seconds()
        self.let_pass(300, pings=False)
        requests = self.since(start + 1)
        fetches = [t for t, what in requests if what == "pending"]
        self.assertEqual(len(fetches), 10, requests)
        self.assertTrue(all(b - a == 30 for a, b in zip(fetches, fetches[1:])), fetches)
        self.assertEqual(len(requests), 10)  # and no login again for each: the session is kept
