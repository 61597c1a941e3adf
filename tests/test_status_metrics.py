"""/metrics on the status page's own HTTPS port: counted from real payments, checked by promtool, guarded."""

import os
import shutil
import subprocess

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SkipTest, TestCase

from bridge.api.client import connect
from bridge.core import states
from bridge.core.journal import PaymentRecord
from bridge.status import facts
from bridge.terminals.caisse_ap.simulator import SimulatorScript
from tests.status_support import (PAYMENT, TOKEN, StatusBridge, closed_port, start_simulator,
                                 unreachable_uplink, wait_for)

PROMTOOL = shutil.which("promtool")
DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")


def sample(text, name, **labels):
    """The value of one sample in an exposition, or None."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, label_text = head.partition("{")
        if metric != name:
            continue
        found = dict(part.split("=", 1) for part in label_text.rstrip("}").split(",") if part) if label_text else {}
        found = {k: v.strip('"') for k, v in found.items()}
        if all(found.get(k) == v for k, v in labels.items()):
            return float(value)
    return None


class MetricsTests(TestCase, StatusBridge):
    timeout = 30

    @inlineCallbacks
    def setUp(self):
        self.simulator, approver = yield start_simulator(self, reactor)
        _, dropper = yield start_simulator(self, reactor, SimulatorScript(disconnect=True))
        yield self.start_bridge(self, {"till-1": approver, "till-2": dropper, "till-3": closed_port()},
                                status_extra=f"metrics_token = {TOKEN}")

    @inlineCallbacks
    def pay(self, terminal):
        factory, opened = connect(reactor, self.url, self.creds, fingerprint=self.fingerprint)
        proto = yield opened
        events = []
        factory.on_event = events.append
        yield proto.call("hello", {"client": self.creds.client_id})
        started = yield proto.call("payment.start", dict(PAYMENT, terminal=terminal))
        yield wait_for(lambda: any(e["payment"]["id"] == started["id"] and e["payment"]["final"] for e in events),
                       "the payment's end")
        proto.sendClose()
        yield factory.closed

    @inlineCallbacks
    def scrape(self, **headers):
        headers = headers or {"Authorization": f"Bearer {TOKEN}"}
        response = yield self.page().request("GET", "/metrics", headers=headers)
        return response

    @inlineCallbacks
    def test_payments_are_counted_by_terminal_and_state_with_their_timings(self):
        for terminal in ("till-1", "till-1", "till-2", "till-3"):
            yield self.pay(terminal)
        response = yield self.scrape()
        self.assertEqual(response.status, 200)
        self.assertTrue(response.header("Content-Type").startswith("text/plain; version=0.0.4"))
        text = response.text
        self.assertEqual(sample(text, "terminal_bridge_payments_total", terminal="till-1", kind="debit",
                                state="approved"), 2)
        self.assertEqual(sample(text, "terminal_bridge_payments_total", terminal="till-2", state="unknown"), 1)
        self.assertEqual(sample(text, "terminal_bridge_payments_total", terminal="till-3", state="failed"), 1)
        self.assertEqual(sample(text, "terminal_bridge_terminal_answer_seconds_count", terminal="till-1"), 2)
        self.assertEqual(sample(text, "terminal_bridge_added_seconds_count", terminal="till-1"), 2)
        # a payment that never reached its terminal has no answer time, and its connection attempt is no "added" time
        self.assertIsNone(sample(text, "terminal_bridge_added_seconds_count", terminal="till-3"))
        self.assertGreaterEqual(sample(text, "terminal_bridge_journal_commit_seconds_count"), 8)
        self.assertEqual(sample(text, "terminal_bridge_terminal_up", terminal="till-1"), 1)
        self.assertEqual(sample(text, "terminal_bridge_terminal_up", terminal="till-3"), 0)
        self.assertEqual(sample(text, "terminal_bridge_unknown_payments"), 1)
        self.assertGreater(sample(text, "terminal_bridge_certificate_expiry_time_seconds"), 0)
        self.assertEqual(sample(text, "terminal_bridge_journal_writable"), 1)

    @inlineCallbacks
    def test_refused_commands_are_counted_by_error_code(self):
        factory, opened = connect(reactor, self.url, self.creds, fingerprint=self.fingerprint)
        proto = yield opened
        yield proto.call("hello", {"client": self.creds.client_id})
        for args in (dict(PAYMENT, terminal="no-such-till"), dict(PAYMENT, terminal="no-such-till"),
                     dict(PAYMENT, terminal="till-1", amount=-5)):
            try:
                yield proto.call("payment.start", args)
            except Exception:
                pass  # the refusal itself is the protocol tests' business; here it must be counted
        proto.sendClose()
        yield factory.closed
        text = (yield self.scrape()).text
        self.assertEqual(sample(text, "terminal_bridge_commands_refused_total", code="unknown_terminal"), 2)
        self.assertEqual(sample(text, "terminal_bridge_commands_refused_total", code="invalid_amount"), 1)

    @inlineCallbacks
    def test_promtool_accepts_the_exposition(self):
        if PROMTOOL is None:
            raise SkipTest("promtool is not installed (Debian package 'prometheus'): the exposition format "
                           "is not checked")
        yield self.pay("till-1")
        yield self.pay("till-2")
        response = yield self.scrape()
        checked = subprocess.run([PROMTOOL, "check", "metrics"], input=response.body, capture_output=True,
                                 timeout=60)
        self.assertEqual(checked.returncode, 0, checked.stdout.decode() + checked.stderr.decode())

    @inlineCallbacks
    def test_the_documented_alert_rules_and_dashboard_use_only_metrics_the_bridge_exports(self):
        import json
        import re

        response = yield self.scrape()
        exported = set()
        for line in response.text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split()
                if kind == "counter":  # prometheus_client names a counter's family with or without _total
                    name = name if name.endswith("_total") else name + "_total"
                suffixes = ("_bucket", "_count", "_sum") if kind == "histogram" else ("",)
                exported.update(name + suffix for suffix in suffixes)
        with open(os.path.join(DOCS, "prometheus-alerts.yml")) as f:
            rules = f.read()
        with open(os.path.join(DOCS, "grafana-dashboard.json")) as f:
            dashboard = json.load(f)
        queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
        used = set(re.findall(r"terminal_bridge_[a-z_]+", rules + "\n".join(queries)))
        self.assertTrue(used)
        self.assertEqual(used - exported, set())

    def test_promtool_accepts_the_documented_alert_rules(self):
        if PROMTOOL is None:
            raise SkipTest("promtool is not installed (Debian package 'prometheus'): the rules are not checked")
        checked = subprocess.run([PROMTOOL, "check", "rules", os.path.join(DOCS, "prometheus-alerts.yml")],
                                 capture_output=True, timeout=60)
        self.assertEqual(checked.returncode, 0, checked.stdout.decode() + checked.stderr.decode())

    @inlineCallbacks
    def test_a_scrape_without_the_token_or_with_a_wrong_one_is_refused(self):
        response = yield self.scrape(Accept="text/plain")
        self.assertEqual(response.status, 401)
        self.assertNotIn(b"terminal_bridge", response.body)
        response = yield self.scrape(Authorization="Bearer " + "u" * 40)
        self.assertEqual(response.status, 401)
        # a signed-in page session is no scrape permission either
        page = self.page()
        yield page.login()
        response = yield page.request("GET", "/metrics")
        self.assertEqual(response.status, 401)


class LiveGaugeTests(TestCase, StatusBridge):
    """The metrics issue 16 asks for that MetricsTests does not reach: refunds, clients connected, a terminal
    busy, the oldest unknown payment's age, and an uplink's connection and feedback backlog."""

    timeout = 30

    @inlineCallbacks
    def scrape(self):
        response = yield self.page().request("GET", "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        self.assertEqual(response.status, 200)
        return response.text

    @inlineCallbacks
    def test_refunds_clients_a_busy_terminal_and_the_oldest_unknown_payment(self):
        _, approver = yield start_simulator(self, reactor)
        _, dropper = yield start_simulator(self, reactor, SimulatorScript(disconnect=True))
        silent, address = yield start_simulator(self, reactor, SimulatorScript(outcome="never"))
        # till-3 keeps the default answer time (180 s): its payment runs until the terminal goes away below
        yield self.start_bridge(self, {"till-1": approver, "till-2": dropper}, admin=True,
                                extra=f"[terminal:till-3]\ntype = caisse-ap-tcp\naddress = {address}\n",
                                status_extra=f"metrics_token = {TOKEN}")
        self.addCleanup(silent.drop_connections)  # before the bridge stops, which waits for a running payment
        proto = yield self.open()
        paid = yield self.pay(proto, "till-1")
        refund = yield proto.call("payment.refund", {"payment_id": paid, "amount": 234})
        yield wait_for(lambda: any(e["payment"]["id"] == refund["id"] and e["payment"]["final"]
                                   for e in proto.events), "the refund's end")
        yield self.pay(proto, "till-2")  # ends unknown
        running = yield proto.call("payment.start", dict(PAYMENT, terminal="till-3"))
        yield wait_for(lambda: any(e["payment"]["id"] == running["id"] and e["payment"]["state"] == "in_progress"
                                   for e in proto.events), "till-3's payment in progress")
        text = yield self.scrape()
        self.assertEqual(sample(text, "terminal_bridge_payments_total", terminal="till-1", kind="refund",
                                state="approved"), 1)
        self.assertEqual(sample(text, "terminal_bridge_payments_total", terminal="till-1", kind="debit",
                                state="approved"), 1)
        self.assertEqual(sample(text, "terminal_bridge_clients_connected"), 1)
        self.assertEqual(sample(text, "terminal_bridge_terminal_busy", terminal="till-3"), 1)
        self.assertEqual(sample(text, "terminal_bridge_terminal_busy", terminal="till-1"), 0)
        self.assertEqual(sample(text, "terminal_bridge_unknown_payments"), 1)
        self.assertGreater(sample(text, "terminal_bridge_unknown_oldest_age_seconds"), 0)
        yield silent.drop_connections()
        yield wait_for(lambda: any(e["payment"]["id"] == running["id"] and e["payment"]["final"]
                                   for e in proto.events), "till-3's payment's end")
        proto.sendClose()
        yield wait_for(lambda: not self.daemon.bridge.connected, "the till's connection closed")
        text = yield self.scrape()
        self.assertEqual(sample(text, "terminal_bridge_clients_connected"), 0)
        self.assertEqual(sample(text, "terminal_bridge_terminal_busy", terminal="till-3"), 0)

    @inlineCallbacks
    def test_more_unknown_payments_than_the_page_shows_are_all_counted(self):
        _, approver = yield start_simulator(self, reactor)
        yield self.start_bridge(self, {"till-1": approver}, status_extra=f"metrics_token = {TOKEN}")
        journal = self.daemon.payments.journal
        waiting = facts.UNKNOWN_LIMIT + 7
        for n in range(waiting):
            record = PaymentRecord(id=f"pay_{n:03d}", command_id=f"cmd_{n}", client_id="cl_a", terminal="till-1",
                                   kind="debit", method="card", amount=100 + n, currency="EUR", args_digest="d",
                                   state=states.UNKNOWN, created=1000.0 + n, updated=1000.0 + n)
            yield journal.create(record, {}, actor="cl_a")
        text = yield self.scrape()
        self.assertEqual(sample(text, "terminal_bridge_unknown_payments"), waiting)
        page = self.page()
        yield page.login()
        response = yield page.request("GET", "/")
        self.assertIn(f"Needs attention: {waiting} payments await a decision.", response.text)
        self.assertIn(f"{waiting} payments await a decision; the {facts.UNKNOWN_LIMIT} that have waited longest "
                      "are shown here", response.text)
        self.assertEqual(response.text.count('<article class="unknown"'), facts.UNKNOWN_LIMIT)

    @inlineCallbacks
    def test_an_uplink_that_cannot_reach_its_cloud_and_its_feedback_backlog(self):
        _, approver = yield start_simulator(self, reactor)
        yield self.start_bridge(self, {"till-1": approver}, status_extra=f"metrics_token = {TOKEN}",
                                extra=unreachable_uplink(os.path.abspath(self.mktemp())))
        service = self.daemon.uplinks.services[0]
        yield wait_for(lambda: service.status.data.get("last_error"), "the uplink's first error")
        proto = yield self.open()  # the uplink's client: its payment's result waits for the cloud
        yield self.pay(proto, "till-1")
        text = yield self.scrape()
        self.assertEqual(sample(text, "terminal_bridge_uplink_connected", uplink="odoo"), 0)
        self.assertEqual(sample(text, "terminal_bridge_feedback_waiting", uplink="odoo"), 1)
        self.assertGreater(sample(text, "terminal_bridge_feedback_oldest_age_seconds", uplink="odoo"), 0)


class AllowListTests(TestCase, StatusBridge):
    timeout = 30

    @inlineCallbacks
    def test_an_address_on_the_allow_list_scrapes_without_a_token(self):
        _, approver = yield start_simulator(self, reactor)
        yield self.start_bridge(self, {"till-1": approver}, status_extra="metrics_allow = 10.0.0.0/8, 127.0.0.1")
        response = yield self.page().request("GET", "/metrics")
        self.assertEqual(response.status, 200)
        self.assertIn(b"terminal_bridge_terminal_up", response.body)

    @inlineCallbacks
    def test_an_address_off_the_allow_list_is_refused(self):
        _, approver = yield start_simulator(self, reactor)
        yield self.start_bridge(self, {"till-1": approver}, status_extra="metrics_allow = 10.0.0.0/8")
        response = yield self.page().request("GET", "/metrics")
        self.assertEqual(response.status, 403)

    @inlineCallbacks
    def test_metrics_are_off_until_a_token_or_an_allow_list_is_set(self):
        _, approver = yield start_simulator(self, reactor)
        yield self.start_bridge(self, {"till-1": approver})
        response = yield self.page().request("GET", "/metrics")
        self.assertEqual(response.status, 403)
        self.assertIn(b"metrics_token", response.body)
