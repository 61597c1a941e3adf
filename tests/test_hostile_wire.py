"""The inputs that used to close the connection without a word and log a traceback (issue 13, item 2), sent again
over a real TLS WebSocket to the real daemon: each gets its documented error, the connection stays open, and
the daemon logs no traceback."""

import os

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from bridge.api.client import connect
from bridge.errors import BridgeError
from tests.support import add_test_client, credentials_of, start_daemon, write_config

UNREADABLE = [
    (b"[" * 5000 + b"]" * 5000, "bad_json"),
    (b'{"id": "\\ud800", "op": "hello", "ts": 1, "args": {}}', "bad_json"),
    (b'{"id": "x", "op": "hello", "ts": NaN}', "bad_json"),
    (b"null", "bad_message"),
]


class HostileMessagesOverTheWireTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def setUp(self):
        directory = self.mktemp()
        os.makedirs(directory)
        path = write_config(directory, {"till-1": "127.0.0.1:9"})
        self.creds = credentials_of(add_test_client(path, "pos"))
        self.daemon, self.url, self.fingerprint = yield start_daemon(self, path, reactor)
        self.failures = []

        def observe(event):
            if event.get("log_failure") is not None or event.get("isError"):
                self.failures.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        self.factory, opened = connect(reactor, self.url, self.creds, fingerprint=self.fingerprint)
        self.till = yield opened
        self.addCleanup(lambda: self.till.sendClose() or self.factory.closed)

    def unsolicited(self):
        d = Deferred()
        self.factory.on_unsolicited = lambda message: d.callback(message) if not d.called else None
        return d

    @inlineCallbacks
    def refused(self, op, args, **call):
        try:
            yield self.till.call(op, args, **call)
        except BridgeError as error:
            return error.code
        self.fail(f"{op} {args} was not refused")

    @inlineCallbacks
    def test_each_hostile_message_gets_its_documented_error_and_the_connection_stays_usable(self):
        for payload, code in UNREADABLE:
            answer = self.unsolicited()
            self.till.send_raw(payload)
            message = yield answer
            self.assertEqual((message["re"], message["error"]["code"]), (None, code), payload[:40])
        hello = {"client": self.creds.client_id}
        self.assertEqual((yield self.refused("hello", hello, ts=10 ** 400)), "stale_timestamp")
        yield self.till.call("hello", hello)
        self.assertEqual((yield self.refused("events.resume", {"after": 2 ** 63})), "bad_request")
        self.assertEqual((yield self.refused("payment.start", {"terminal": "till-1", "amount": 5, "currency": "EUR",
                                                               "tip": 500})), "bad_request")
        info = yield self.till.call("bridge.info")
        self.assertEqual(info["terminals"], ["till-1"])
        self.assertEqual(self.failures, [])
