"""The STATUS= line `systemctl status` shows: terminals up and clients connected, sent again when they change."""

import os
import socket

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from bridge.api.client import connect
from bridge.core.contract import TerminalStatus
from bridge.service.daemon import status_line, terminal_is_up
from tests.support import add_test_client, credentials_of, start_daemon, start_simulator, write_config


def test_a_terminal_is_up_when_its_driver_says_so_whatever_its_words():
    assert terminal_is_up(TerminalStatus("idle", "Ready.", up=True).as_dict())
    assert terminal_is_up(TerminalStatus("busy", "", up=True, facts={"last_error": "link_lost"}).as_dict())
    assert not terminal_is_up(TerminalStatus("idle", "Ready.", up=False, facts={"last_error": "link_lost"}).as_dict())
    assert not terminal_is_up({"state": "idle"})  # a status without the driver's word is not taken as up


def test_the_status_line_counts_terminals_up_and_names_those_down():
    terminals = [{"name": "till-1", "state": "idle", "up": True}, {"name": "till-2", "state": "idle", "up": False}]
    assert status_line(8443, terminals, 2) == \
        "Listening on port 8443; terminals up: 1/2 (down: till-2); clients connected: 2"


def test_the_status_line_names_at_most_five_terminals_down():
    terminals = [{"name": f"t{i}", "state": "offline", "up": False} for i in range(7)]
    assert "(down: t0, t1, t2, t3, t4, ...)" in status_line(1, terminals, 0)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DaemonStatusTests(TestCase):
    timeout = 20

    @inlineCallbacks
    def setUp(self):
        _simulator, terminal = yield start_simulator(self, reactor)
        directory = self.mktemp()
        os.makedirs(directory)
        path = write_config(directory, {"till-1": terminal,
                                        "till-2": f"127.0.0.1:{_closed_port()}"})
        self.creds = credentials_of(add_test_client(path, "pos"))
        self.sent = []
        self.daemon, self.url, self.fingerprint = yield start_daemon(self, path, reactor, notify=self.record)
        self.port = int(self.url.rsplit(":", 1)[1])

    def record(self, message):
        self.sent.append(message)
        return True

    def statuses(self):
        return [line[len("STATUS="):] for m in self.sent for line in m.splitlines() if line.startswith("STATUS=")]

    @inlineCallbacks
    def wait_for_status(self, text):
        for _ in range(250):
            if self.statuses() and text in self.statuses()[-1]:
                return
            yield deferLater(reactor, 0.02, lambda: None)
        self.fail(f"no STATUS with {text!r}: {self.statuses()}")

    @inlineCallbacks
    def open(self):
        factory, opened = connect(reactor, f"wss://127.0.0.1:{self.port}", self.creds, fingerprint=self.fingerprint)
        proto = yield opened
        yield proto.call("hello", {"client": self.creds.client_id})
        return proto, factory

    def test_ready_comes_with_the_first_status(self):
        self.assertEqual(self.sent[0], f"READY=1\nSTATUS=Listening on port {self.port}; terminals up: 2/2; "
                                       "clients connected: 0")

    @inlineCallbacks
    def test_clients_connected_follows_hello_and_disconnect(self):
        proto, factory = yield self.open()
        yield self.wait_for_status("clients connected: 1")
        proto.sendClose()
        yield factory.closed
        yield self.wait_for_status("clients connected: 0")

    @inlineCallbacks
    def test_a_connection_that_never_says_hello_is_not_a_client(self):
        factory, opened = connect(reactor, f"wss://127.0.0.1:{self.port}", self.creds, fingerprint=self.fingerprint)
        proto = yield opened
        yield proto.call("hello", {"client": "cl_nobody"}).addErrback(lambda f: None)
        self.assertEqual(len(self.daemon.bridge.connected), 0)
        proto.sendClose()
        yield factory.closed
        self.assertFalse(any("clients connected: 1" in s for s in self.statuses()))

    @inlineCallbacks
    def test_a_terminal_that_could_not_be_reached_shows_as_down(self):
        proto, factory = yield self.open()
        self.addCleanup(lambda: (proto.sendClose(), factory.closed)[1])
        yield proto.call("payment.start", {"terminal": "till-2", "amount": 100, "currency": "EUR"})
        yield self.wait_for_status("terminals up: 1/2 (down: till-2)")

    @inlineCallbacks
    def test_no_status_after_stopping(self):
        yield self.daemon.stop()
        count = len(self.sent)
        self.daemon._report_status()
        self.assertEqual(len(self.sent), count)
        self.assertIn("STOPPING=1", self.sent)
