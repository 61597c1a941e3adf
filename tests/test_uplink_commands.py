"""Commands fetched over HTTPS: verified and run through the same Session checks and core as the LAN, once."""

import json
import os

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from bridge.api import signing
from bridge.api.session import Bridge
from bridge.core.journal import Journal
from bridge.core.payments import PaymentService
from bridge.core.registry import TerminalRegistry
from bridge.errors import BridgeError
from bridge.uplink import commands
from bridge.uplink.commands import CommandFetcher
from bridge.uplink.config import UplinkConfig
from bridge.uplink.https import Response
from tests.support import RecordingDriver, add_test_client, load_config, write_config

NOW = 1_700_000_000
PAYMENT = {"terminal": "till-1", "amount": 1234, "currency": "EUR"}


class FakeHTTPS:
    """Odoo's routes as canned answers; records what the bridge sent."""

    def __init__(self):
        self.pending = []  # commands to serve
        self.pending_code = 200
        self.pending_body = None  # bytes served instead of {"commands": pending}
        self.fail = False
        self.hold: Deferred = None
        self.requests = []
        self.acks = []

    def request(self, method, url, body=None, content_type=None, headers=None):
        message = json.loads(body)
        self.requests.append((url, message))
        if self.fail:
            return fail(BridgeError("uplink_unreachable", "no answer from https://odoo in time"))
        if url.endswith("/pending"):
            body = self.pending_body or json.dumps({"commands": self.pending}).encode()
            answer = Response(self.pending_code, Headers(), body)
            if self.hold is not None:
                return self.hold.addCallback(lambda _: answer)
            return succeed(answer)
        self.acks.append(message)
        return succeed(Response(200, Headers(), b'{"ok": true}'))


class CommandFetcherTests(SynchronousTestCase):
    def setUp(self):
        directory = self.mktemp()
        os.makedirs(directory)
        path = write_config(directory, {"till-1": "127.0.0.1:1"})
        self.creds = add_test_client(path, "odoo")
        self.config = load_config(path)
        self.clock = Clock()
        self.clock.advance(NOW)
        self.journal = Journal.open(os.path.join(directory, "journal.sqlite3"), threaded=False,
                                    now=self.clock.seconds)
        self.addCleanup(self.journal.close)
        self.driver = RecordingDriver("till-1")
        self.payments = PaymentService(self.journal, TerminalRegistry([self.driver]), self.clock)
        self.bridge = Bridge(self.config, self.payments, self.clock)
        self.https = FakeHTTPS()
        self.results = []
        self.fetcher = self.make_fetcher()
        self.client = self.config.clients["odoo"]

    def make_fetcher(self):
        uplink = UplinkConfig(name="odoo", client="odoo", url="https://odoo.example.com", database="shop",
                              channel_token="t" * 24, feedback_secret="f" * 20)
        return CommandFetcher(uplink, client=self.config.clients["odoo"], bridge=self.bridge, https=self.https,
                              clock=self.clock, on_result=self.results.append)

    def command(self, op="payment.start", args=PAYMENT, command_id="c-1", ts=None, secret=None):
        message = {"id": command_id, "op": op, "ts": NOW if ts is None else ts, "args": args}
        return signing.signed(message, secret or self.creds["secret_in"])

    def acked(self):
        return {a["command_id"]: a["reply"] for a in self.https.acks}

    def test_the_bridges_requests_are_signed_with_the_outbound_secret(self):
        self.fetcher.fetch()
        url, message = self.https.requests[0]
        self.assertEqual(url, "https://odoo.example.com/terminal_bridge/pending")
        self.assertEqual((message["client"], message["database"], message["ts"]), ("cl_odoo", "shop", NOW))
        self.assertTrue(signing.verify(message, self.creds["secret_out"]))
        self.assertEqual(self.results, [None])

    def test_a_payment_command_runs_and_is_acknowledged_with_the_signed_reply(self):
        self.https.pending = [self.command()]
        self.fetcher.fetch()
        self.assertEqual(len(self.driver.sent), 1)
        reply = self.acked()["c-1"]
        self.assertTrue(reply["ok"])
        self.assertEqual(reply["re"], "c-1")
        self.assertEqual(reply["result"]["state"], "accepted")
        self.assertTrue(signing.verify(reply, self.creds["secret_out"]))
        ack = self.https.acks[0]
        self.assertTrue(signing.verify(ack, self.creds["secret_out"]))

    def test_a_bad_signature_is_refused_and_reaches_no_terminal(self):
        self.https.pending = [self.command(secret="x" * 64)]
        self.fetcher.fetch()
        self.assertEqual(self.driver.runs, [])
        self.assertEqual(self.acked()["c-1"]["error"]["code"], "bad_signature")

    def test_a_stale_command_is_refused(self):
        self.https.pending = [self.command(ts=NOW - 3600)]
        self.fetcher.fetch()
        self.assertEqual(self.driver.runs, [])
        self.assertEqual(self.acked()["c-1"]["error"]["code"], "stale_timestamp")

    def test_a_replayed_non_payment_command_is_refused(self):
        first = self.fetcher
        first.fetch()  # nothing pending
        self.https.pending = [self.command(op="terminal.list", args={}, command_id="q-1")]
        first.fetch()
        self.assertTrue(self.acked()["q-1"]["ok"])
        # the same signed message, captured and sent again to a bridge that lost its memory of replies
        second = self.make_fetcher()
        self.https.acks.clear()
        second.fetch()
        self.assertEqual(self.acked()["q-1"]["error"]["code"], "replayed")

    def test_a_reply_larger_than_odoo_reads_is_acknowledged_as_an_error(self):
        """Odoo's /ack reads at most MAX_ACK_BYTES: a larger one would be refused (413) at every fetch, forever."""
        self.https.pending = [self.command()]
        self.fetcher.fetch()
        first = self.acked()["c-1"]  # a payment.start's reply

        def listed(command_id):
            self.https.acks.clear()
            self.https.pending = [self.command(op="payment.list", args={"limit": 200}, command_id=command_id)]
            self.fetcher.fetch()
            (ack,) = self.https.acks
            return ack, len(json.dumps(ack, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))

        ack, size = listed("l-1")
        self.assertTrue(ack["reply"]["ok"])
        self.patch(commands, "MAX_ACK_BYTES", size)
        ack, same = listed("l-2")
        self.assertEqual((ack["reply"]["ok"], same), (True, size), "a body of exactly the limit is sent")
        self.patch(commands, "MAX_ACK_BYTES", size - 1)
        ack, smaller = listed("l-3")
        reply = ack["reply"]
        self.assertEqual((reply["re"], reply["ok"], reply["error"]["code"]), ("l-3", False, "reply_too_large"))
        self.assertTrue(signing.verify(reply, self.creds["secret_out"]))
        self.assertTrue(signing.verify(ack, self.creds["secret_out"]))
        self.assertLess(smaller, size - 1)
        # A reply that carries a payment is sent as it is, whatever its size: never turned into a refusal that Odoo
        # would take for a payment that did not start.
        self.assertEqual(first["result"]["state"], "accepted")
        self.https.acks.clear()
        self.patch(commands, "MAX_ACK_BYTES", 10)
        self.fetcher._post_ack("c-1", first)
        (ack,) = self.https.acks
        self.assertEqual(ack["reply"], first)

    def test_a_command_fetched_twice_runs_once(self):
        self.https.pending = [self.command()]
        self.fetcher.fetch()
        self.fetcher.fetch()  # Odoo lost the acknowledgement and lists it again
        self.assertEqual(len(self.driver.runs), 1)
        self.assertEqual(len(self.https.acks), 2)
        first, again = (a["reply"]["result"] for a in self.https.acks)
        self.assertEqual(first["id"], again["id"])
        # the payment as it is now, not as it was accepted
        self.assertEqual((first["state"], again["state"]), ("accepted", "in_progress"))

    def test_a_remembered_command_is_checked_before_it_is_answered_again(self):
        self.https.pending = [self.command(op="terminal.list", args={}, command_id="q-1")]
        self.fetcher.fetch()
        self.assertTrue(self.acked()["q-1"]["ok"])
        for forged in (self.command(op="terminal.list", args={}, command_id="q-1", secret="x" * 64),
                       self.command(op="terminal.list", args={}, command_id="q-1", ts=NOW - 3600)):
            self.https.pending, self.https.acks = [forged], []
            self.fetcher.fetch()
            self.assertIn(self.acked()["q-1"]["error"]["code"], ("bad_signature", "stale_timestamp"))
        # the same id for another op or other arguments is not answered with the first command's reply
        self.https.pending = [self.command(command_id="q-1")]
        self.https.acks = []
        self.fetcher.fetch()
        self.assertEqual(self.acked()["q-1"]["error"]["code"], "idempotency_mismatch")
        self.assertEqual(self.driver.runs, [])
        self.https.pending = [self.command(op="terminal.list", args={"x": 1}, command_id="q-1")]
        self.https.acks = []
        self.fetcher.fetch()
        self.assertEqual(self.acked()["q-1"]["error"]["code"], "idempotency_mismatch")
        # and the right one again is answered from memory
        self.https.pending = [self.command(op="terminal.list", args={}, command_id="q-1")]
        self.https.acks = []
        self.fetcher.fetch()
        self.assertTrue(self.acked()["q-1"]["ok"])

    def test_a_payment_replayed_with_other_arguments_or_a_bad_signature_is_refused(self):
        self.https.pending = [self.command()]
        self.fetcher.fetch()
        for bad, code in ((self.command(args=dict(PAYMENT, amount=9999)), "idempotency_mismatch"),
                          (self.command(secret="x" * 64), "bad_signature")):
            self.https.pending, self.https.acks = [bad], []
            self.fetcher.fetch()
            self.assertEqual(self.acked()["c-1"]["error"]["code"], code)
        self.assertEqual(len(self.driver.runs), 1)

    def test_commands_are_held_to_the_lan_limits_and_acknowledged_with_their_error(self):
        big = self.command(args=dict(PAYMENT, note="x" * 100_000), command_id="big-1")
        long_id = self.command(command_id="i" * 129)
        self.https.pending = [big, long_id, self.command(op="payment.explode", command_id="op-1"),
                              self.command(command_id="ok-1")]
        self.fetcher.fetch()
        codes = {k: (v.get("error") or {}).get("code") for k, v in self.acked().items()}
        self.assertEqual(codes, {"big-1": "message_too_large", "i" * 129: "bad_message", "op-1": "unknown_op",
                                 "ok-1": None})
        self.assertEqual(len(self.driver.runs), 1)

    def test_every_refusal_is_counted_by_its_code_for_the_metrics(self):
        # terminal_bridge_commands_refused_total counts the uplinks' refusals too (docs/operations.md, Metrics)
        refused = []
        self.bridge.on_refused = refused.append
        self.https.pending = [self.command(command_id="ok-1")]
        self.fetcher.fetch()
        self.https.pending = [self.command(command_id="sig-1", secret="x" * 64),
                              self.command(command_id="old-1", ts=NOW - 3600),
                              self.command(args=dict(PAYMENT, amount=9999), command_id="ok-1"),
                              self.command(args=dict(PAYMENT, terminal="nowhere"), command_id="t-1")]
        self.fetcher.fetch()
        self.assertEqual(sorted(refused), ["bad_signature", "idempotency_mismatch", "stale_timestamp",
                                           "unknown_terminal"])

    def test_after_a_restart_the_same_command_id_returns_the_same_payment(self):
        self.https.pending = [self.command()]
        self.fetcher.fetch()
        payment_id = self.acked()["c-1"]["result"]["id"]
        self.https.acks.clear()
        self.make_fetcher().fetch()
        self.assertEqual(self.acked()["c-1"]["result"]["id"], payment_id)
        self.assertEqual(len(self.driver.runs), 1)

    def test_a_command_first_sent_over_the_lan_is_not_run_again(self):
        from bridge.api.session import Session

        lan_replies = []
        lan = Session(self.bridge, lan_replies.append, peer="lan")
        lan.message_received(json.dumps(signing.signed({"id": "h", "op": "hello", "ts": NOW,
                                                        "args": {"client": "cl_odoo"}}, self.creds["secret_in"])))
        lan.message_received(json.dumps(self.command(command_id="both-1")))
        lan_payment = [r for r in lan_replies if r.get("re") == "both-1"][0]["result"]["id"]
        self.https.pending = [self.command(command_id="both-1")]
        self.fetcher.fetch()
        self.assertEqual(self.acked()["both-1"]["result"]["id"], lan_payment)
        self.assertEqual(len(self.driver.runs), 1)

    def test_ops_of_a_live_connection_are_refused(self):
        self.https.pending = [self.command(op="events.resume", args={"after": 0}, command_id="e-1"),
                              self.command(op="hello", args={"client": "cl_odoo"}, command_id="h-1")]
        self.fetcher.fetch()
        self.assertEqual({k: v["error"]["code"] for k, v in self.acked().items()},
                         {"e-1": "unknown_op", "h-1": "unknown_op"})

    def test_commands_without_an_id_are_skipped_and_logged_once(self):
        from twisted.logger import globalLogPublisher

        logged = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        self.https.pending = [{"op": "payment.start", "id": None}, "junk", self.command()]
        self.fetcher.fetch()
        self.assertEqual(list(self.acked()), ["c-1"])
        self.fetcher.fetch()
        skipped = [e for e in logged if "without a string id" in e.get("log_format", "")]
        self.assertEqual(len(skipped), 2)  # one for each bad command, not one per fetch

    def test_an_unreachable_odoo_is_reported_in_words(self):
        self.https.fail = True
        self.fetcher.fetch()
        self.assertIn("no answer from", self.results[-1])

    def test_a_missing_module_is_reported_in_words(self):
        self.https.pending_code = 404
        self.fetcher.fetch()
        self.assertIn("module installed", self.results[-1])

    def test_a_list_of_commands_nested_too_deeply_is_a_logged_error_and_the_next_fetch_runs(self):
        logged = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        self.https.pending_body = b"[" * 100_000 + b"]" * 100_000
        self.fetcher.start()
        self.assertIn("nested too deeply", self.results[-1])
        warned = [e for e in logged if "could not fetch commands" in e.get("log_format", "")]
        self.assertEqual([e["code"] for e in warned], ["uplink_bad_answer"])
        self.https.pending_body = None
        self.https.pending = [self.command()]
        self.clock.advance(self.fetcher.interval)
        self.assertEqual(self.results[-1], None)
        self.assertIn("c-1", self.acked())
        self.fetcher.stop()

    def test_a_wake_up_during_a_fetch_fetches_once_more(self):
        self.fetcher.start()
        self.https.hold = Deferred()
        self.clock.advance(30)  # the periodic fetch, held by Odoo
        self.fetcher.fetch()
        self.fetcher.fetch()
        self.assertEqual(len(self.https.requests), 2)
        hold, self.https.hold = self.https.hold, None
        hold.callback(None)
        self.assertEqual(len(self.https.requests), 3)
        self.fetcher.stop()

    def test_the_periodic_fetch(self):
        self.fetcher.start()
        self.assertEqual(len(self.https.requests), 1)
        self.clock.advance(30)
        self.clock.advance(30)
        self.assertEqual(len(self.https.requests), 3)
        self.successResultOf(self.fetcher.stop())
        self.clock.advance(300)
        self.assertEqual(len(self.https.requests), 3)
