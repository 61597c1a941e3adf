"""Stripe readers through the whole bridge: TLS WebSocket client -> daemon -> stripe library -> fake Stripe API;
and a crash mid-payment settled at the next start by asking Stripe."""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.logger import globalLogPublisher
from zope.interface import implementer

from bridge.config import TerminalConfig
from bridge.core.journal import Journal
from bridge.core.payments import PaymentService
from bridge.core.registry import TerminalRegistry
from bridge.core.contract import ITerminalDriver, TerminalStatus
from bridge.terminals.catalogue import VALIDATORS
from bridge.terminals.stripe.driver import build_stripe_driver
from bridge.terminals.stripe.options import parse_stripe_options, read_api_key
from tests.stripe_support import KEY, SERIAL, StripeTestCase, sleep
from tests.support import add_test_client, credentials_of, open_till, start_daemon


def write_key(directory: str, key: str = KEY) -> str:
    path = os.path.join(directory, "stripe.key")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return path


class DaemonTests(StripeTestCase):
    @inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.auto_present(delay=0.05)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        key_file = write_key(directory)
        path = os.path.join(directory, "bridge.conf")
        with open(path, "w") as f:
            f.write("\n".join(["[bridge]", "listen = 127.0.0.1:0", "state_dir = state", "clients_file = clients.conf",
                               "[terminal:stripe-1]", "type = stripe", f"serial_number = {SERIAL}",
                               f"api_key_file = {key_file}", f"api_base = {self.fake.url}", "poll_interval = 0.05",
                               "payment_timeout = 5", "status_interval = 30", ""]))
        self.creds = credentials_of(add_test_client(path, "pos", rights=("pay", "read", "refund")))
        self.daemon, self.url, self.fingerprint = yield start_daemon(self, path, reactor)
        self.addCleanup(self.daemon.payments.registry.driver("stripe-1").stop)

    @inlineCallbacks
    def open(self):
        return (yield open_till(self, reactor, self.url, self.creds, self.fingerprint))

    @inlineCallbacks
    def final(self, proto, payment_id):
        for _ in range(400):
            finals = [e["payment"] for e in proto.events
                      if e["payment"]["id"] == payment_id and e["payment"]["final"]]
            if finals:
                return finals[0]
            yield sleep(0.01)
        self.fail(f"no final event for {payment_id}: {proto.events}")

    @inlineCallbacks
    def test_a_stripe_payment_and_its_refund_end_to_end(self):
        proto = yield self.open()
        started = yield proto.call("payment.start", {"terminal": "stripe-1", "amount": 1234, "currency": "EUR"})
        payment = yield self.final(proto, started["id"])
        self.assertEqual(payment["state"], "approved")
        states = [e["payment"]["state"] for e in proto.events if e["payment"]["id"] == started["id"]]
        self.assertEqual(states, ["accepted", "in_progress", "approved"])
        pi_id = payment["details"]["payment_intent"]
        self.assertEqual(self.fake.intents[pi_id]["status"], "succeeded")
        self.assertEqual(self.fake.intents[pi_id]["metadata"]["payment_id"], started["id"])

        refund = yield proto.call("payment.refund", {"payment_id": started["id"], "amount": 400})
        refunded = yield self.final(proto, refund["id"])
        self.assertEqual(refunded["state"], "approved")
        self.assertEqual([r["amount"] for r in self.fake.refunds.values()], [400])

    @inlineCallbacks
    def test_terminal_status_shows_the_reader(self):
        proto = yield self.open()
        driver = self.daemon.payments.registry.driver("stripe-1")
        yield driver.refresh_status()
        status = yield proto.call("terminal.status", {"terminal": "stripe-1"})
        self.assertEqual((status["type"], status["state"], status["online"], status["serial_number"]),
                         ("stripe", "idle", True, SERIAL))
        self.assertEqual(status["device_type"], "simulated_wisepos_e")


@implementer(ITerminalDriver)
class _CrashingDriver:
    """Does what the Stripe driver does up to handing the payment to the reader, then the bridge "dies"."""

    kind = "stripe"

    def __init__(self, name, api, reader_id):
        self.name, self.api, self.reader_id = name, api, reader_id

    @inlineCallbacks
    def pay(self, request, before_send):
        pi = yield self.api.create_payment_intent(request.amount, request.currency.code, request.payment_id,
                                                  f"tb-{request.payment_id}-pi")
        yield before_send({"payment_intent": pi["id"], "reader": self.reader_id})
        yield self.api.process_payment_intent(self.reader_id, pi["id"], f"tb-{request.payment_id}-ppi-0")
        yield Deferred()  # never answers: the process is gone

    def status(self):
        return TerminalStatus("idle", "")

    def start(self):
        pass

    def stop(self):
        pass

    def cancel(self, payment_id):
        return None  # like a terminal without a cancel message

    def recover(self, payment_id, details):
        return succeed(None)


class CrashRecoveryTests(StripeTestCase):
    @inlineCallbacks
    def test_a_payment_authorised_while_the_bridge_was_down_is_captured_at_the_next_start(self):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        journal = Journal.open(os.path.join(directory, "journal.sqlite3"), threaded=False)
        self.addCleanup(journal.close)
        crashing = _CrashingDriver("stripe-1", self.make_api(), self.reader["id"])
        first = PaymentService(journal, TerminalRegistry([crashing]), reactor)
        view = yield first.start("cl_pos", "cmd-1", {"terminal": "stripe-1", "amount": 1234, "currency": "EUR"})
        yield self.wait_for(lambda: self.paths("process_payment_intent"), "the reader to get the payment")
        self.assertEqual(journal.get(view["id"]).state, "in_progress")
        self.fake.present(self.reader["id"])  # the customer taps while the bridge is down

        config = TerminalConfig("stripe-1", "stripe", {"type": "stripe", "reader": self.reader["id"],
                                                      "api_key_file": write_key(directory),
                                                      "api_base": self.fake.url, "status_interval": "30"})
        driver = build_stripe_driver(config, reactor)
        self.addCleanup(driver.stop)
        second = PaymentService(journal, TerminalRegistry([driver]), reactor)
        settled = yield second.recover()
        self.assertEqual([(r.id, r.state) for r in settled], [(view["id"], "approved")])
        pi_id = journal.get(view["id"]).details["payment_intent"]
        self.assertEqual(self.fake.intents[pi_id]["status"], "succeeded")


class ConfigurationTests(StripeTestCase):
    def test_the_options_are_checked(self):
        self.assertIn("stripe", VALIDATORS)
        _, problems = parse_stripe_options({"type": "stripe", "reader": "tmr_1", "api_key_file": "/k"})
        self.assertEqual(problems, [])
        _, problems = parse_stripe_options({"type": "stripe", "reader": "tmr_1", "serial_number": "X",
                                            "api_key": "sk_live_x", "api_key_file": "/k",
                                            "poll_interval": "-1", "api_base": "http://example.com"})
        keys = sorted(k for k, _ in problems)
        self.assertEqual(keys, ["api_base", "api_key", "poll_interval", "reader"])
        self.assertIn("does not belong in the main configuration", dict(problems)["api_key"])
        _, problems = parse_stripe_options({"type": "stripe", "serial_number": "X"})
        self.assertEqual([k for k, _ in problems], ["api_key_file"])

    def test_the_key_comes_from_a_file_or_a_systemd_credential(self):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = write_key(directory, "rk_test_abc")
        self.assertEqual(read_api_key(path, None), ("rk_test_abc", None))
        self.assertEqual(read_api_key(None, "stripe.key", {"CREDENTIALS_DIRECTORY": directory}),
                         ("rk_test_abc", None))
        key, problem = read_api_key(None, "stripe.key", {})
        self.assertIsNone(key)
        self.assertIn("CREDENTIALS_DIRECTORY", problem)
        key, problem = read_api_key(os.path.join(directory, "missing"), None)
        self.assertIsNone(key)
        write_key(directory, "not a key")
        self.assertIsNone(read_api_key(path, None)[0])

    @inlineCallbacks
    def test_a_full_live_secret_key_draws_a_warning(self):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        seen = []
        globalLogPublisher.addObserver(seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)
        config = TerminalConfig("live-1", "stripe", {"type": "stripe", "reader": self.reader["id"],
                                                    "api_key_file": write_key(directory, "sk_live_0123456789"),
                                                    "api_base": self.fake.url, "status_interval": "30"})
        driver = build_stripe_driver(config, reactor)
        yield driver.stop()
        warnings = [e for e in seen if e.get("log_level") is not None and e["log_level"].name == "warn"
                    and "restricted key" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 1)
        self.assertNotIn("sk_live_0123456789", str(warnings[0]))

    @inlineCallbacks
    def test_a_missing_key_fails_payments_clearly_and_the_status_says_why(self):
        config = TerminalConfig("nokey", "stripe", {"type": "stripe", "reader": self.reader["id"],
                                                   "api_key_file": "/nonexistent/stripe.key"})
        driver = build_stripe_driver(config, reactor)
        self.assertEqual(driver.status().as_dict()["state"], "error")
        from tests.stripe_support import SendRecorder

        outcome = yield driver.pay(self.request(), SendRecorder(self.fake))
        self.assertEqual((outcome.state, outcome.code), ("failed", "stripe_key_missing"))
        self.assertIn("configuration error", outcome.message)
        self.assertEqual(self.fake.requests, [])
