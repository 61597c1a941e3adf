"""The status page over real HTTPS: login, cookie, lock-out, what it shows, and resolving an unknown payment."""

import http.client
import re
import socket
import ssl

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from bridge.cli.resolve import resolve as cli_resolve
from bridge.core.contract import TerminalStatus
from bridge.core.journal import Journal
from bridge.core.payments import PaymentService
from bridge.core.registry import TerminalRegistry
from bridge.status import auth
from bridge.status.facts import terminal_facts
from bridge.status.page import _terminals as terminals_part
from bridge.terminals.caisse_ap.simulator import SimulatorScript
from bridge.testing import RecordingDriver
from tests.status_support import (PASSWORD, PageClient, StatusBridge, closed_port, sleep, start_simulator,
                                 unreachable_uplink, wait_for)
from tests.test_uplink_end_to_end import UplinkEndToEnd


def csrf_of(html):
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


class _SaysDriver(RecordingDriver):
    def __init__(self, name, said):
        super().__init__(name)
        self.said = said

    def status(self):
        return self.said


def test_a_terminal_is_shown_up_or_down_as_its_driver_says_whatever_its_words(tmp_path):
    # Only the driver knows what its words mean: the page shows its ``up`` as it is, never worked out again.
    said = {
        "till-1": TerminalStatus("idle", "Ready.", up=False, facts={"last_error": "link_lost"}),  # after a lost link
        "till-2": TerminalStatus("unknown", "Not read from Stripe yet.", up=True),  # a reader before its first read
        "till-3": TerminalStatus("offline", "The reader is offline.", up=False),
        "till-4": TerminalStatus("error", "Its key is missing.", up=True),
        "till-5": TerminalStatus("idle", "Ready.", up=True),
    }
    journal = Journal.open(str(tmp_path / "journal.db"), threaded=False)
    try:
        payments = PaymentService(journal, TerminalRegistry(_SaysDriver(n, s) for n, s in said.items()), Clock())
        terminals = terminal_facts(type("Daemon", (), {"payments": payments})())
    finally:
        journal.close()
    assert {t["name"]: t["up"] for t in terminals} == {name: status.up for name, status in said.items()}
    html = terminals_part(terminals, now=0.0)
    shown = {name: f'<article class="terminal {"up" if status.up else "down"}" id="terminal-{name}">' in html
             for name, status in said.items()}
    assert shown == dict.fromkeys(said, True)


class PageTests(TestCase, StatusBridge):
    timeout = 30

    @inlineCallbacks
    def setUp(self):
        _, approver = yield start_simulator(self, reactor)
        _, dropper = yield start_simulator(self, reactor, SimulatorScript(disconnect=True))
        self.addresses = {"till-1": approver, "till-2": dropper, "till-3": closed_port()}
        yield self.start_bridge(self, self.addresses, admin=True)

    @inlineCallbacks
    def signed_in(self):
        page = self.page()
        response = yield page.login()
        self.assertEqual(response.status, 303)
        return page

    # -- access -------------------------------------------------------------------------------------

    @inlineCallbacks
    def test_stopping_the_page_closes_a_browser_s_open_connection(self):
        # A browser keeps its connection open after a page has loaded (keep-alive).  Stopping the page (a
        # shutdown) must close it, not leave it and its idle timer to the browser's goodwill.
        context = ssl.create_default_context(cafile=self.daemon.config.tls_certificate)
        context.check_hostname = False
        conn = http.client.HTTPSConnection("127.0.0.1", self.page_port, context=context, timeout=10)
        self.addCleanup(conn.close)

        def load_then_keep_open():
            conn.request("GET", "/login")
            response = conn.getresponse()
            response.read()
            return response.status

        self.assertEqual((yield deferToThread(load_then_keep_open)), 200)
        self.assertEqual(len(self.daemon.status_page.connections.protocols), 1)
        yield self.daemon.status_page.stop()
        self.assertEqual(self.daemon.status_page.connections.protocols, {})

        def what_the_browser_reads():
            try:
                return conn.sock.recv(1)
            except socket.timeout:
                return "still open"
            except (OSError, ssl.SSLError):
                return b""  # reset: closed as well

        self.assertEqual((yield deferToThread(what_the_browser_reads)), b"")

    @inlineCallbacks
    def test_nothing_is_shown_before_signing_in(self):
        page = self.page()
        response = yield page.request("GET", "/")
        self.assertEqual((response.status, response.header("Location")), (303, "/login"))
        response = yield page.request("GET", "/fragment")
        self.assertEqual(response.status, 401)
        self.assertNotIn(b"till-1", response.body)
        response = yield page.request("GET", "/login")
        self.assertEqual(response.status, 200)
        self.assertIn(b'type="password"', response.body)

    @inlineCallbacks
    def test_signing_in_sets_a_secure_httponly_strict_cookie_and_shows_the_page(self):
        page = self.page()
        response = yield page.login()
        cookie = response.header("Set-Cookie")
        self.assertRegex(cookie, r"^tb_status=[A-Za-z0-9_-]{40,}; Path=/; Secure; HttpOnly; SameSite=Strict$")
        response = yield page.request("GET", "/")
        self.assertEqual(response.status, 200)
        self.assertIn("All is well: 3 terminals ready to take payments.", response.text)
        self.assertIn(self.fingerprint, response.text)
        for name in ("till-1", "till-2", "till-3"):
            self.assertIn(f'id="terminal-{name}"', response.text)
        self.assertIn("default-src 'none'", response.header("Content-Security-Policy"))
        self.assertEqual(response.header("Cache-Control"), "no-store")

    @inlineCallbacks
    def test_a_wrong_password_is_refused_and_five_lock_the_device_out(self):
        page = self.page()
        for attempt in range(auth.MAX_FAILURES):
            response = yield page.login("wrong password")
            self.assertIsNone(page.cookie)
            self.assertIn("Wrong password", response.text)
        self.assertEqual(response.status, 429)
        self.assertIn("locked out", response.text)
        response = yield page.login(PASSWORD)  # even the right one, while locked out
        self.assertEqual(response.status, 429)
        self.assertIsNone(page.cookie)

    @inlineCallbacks
    def test_without_a_password_set_nobody_signs_in_and_the_page_says_how_to_set_one(self):
        import os

        os.remove(self.daemon.config.status.password_file)
        page = self.page()
        response = yield page.login("")
        self.assertEqual(response.status, 503)
        self.assertIn("terminal-bridge status-page password", response.text)
        self.assertIsNone(page.cookie)

    @inlineCallbacks
    def test_signing_out_ends_the_session(self):
        page = yield self.signed_in()
        home = yield page.request("GET", "/")
        cookie = page.cookie
        yield page.request("POST", "/logout", {"csrf": csrf_of(home.text)})
        response = yield page.request("GET", "/", headers={"Cookie": cookie})
        self.assertEqual(response.status, 303)

    @inlineCallbacks
    def test_the_page_reads_without_javascript_and_loads_nothing_from_elsewhere(self):
        page = yield self.signed_in()
        response = yield page.request("GET", "/")
        self.assertIn('<noscript><meta http-equiv="refresh"', response.text)
        for url in re.findall(r'(?:src|href|action)="([^"]*)"', response.text):
            self.assertTrue(url.startswith("/"), url)
        for asset in ("/static/status.css", "/static/status.js"):
            got = yield page.request("GET", asset)
            self.assertEqual(got.status, 200, asset)

    # -- what it shows ------------------------------------------------------------------------------

    @inlineCallbacks
    def test_an_unreachable_terminal_is_named_with_its_problem_in_words(self):
        proto = yield self.open()
        yield self.pay(proto, "till-3")
        page = yield self.signed_in()
        response = yield page.request("GET", "/fragment")
        self.assertIn("Needs attention: terminal till-3 cannot take payments.", response.text)
        block = response.text.split('id="terminal-till-3"')[1].split("</article>")[0]
        self.assertIn("cannot be reached", block)
        self.assertIn("Check that it is switched on and connected.", block)

    @inlineCallbacks
    def test_an_approved_payment_shows_the_masked_card_number_and_no_full_one(self):
        proto = yield self.open()
        payment_id = yield self.pay(proto, "till-1")
        masked = self.daemon.payments.journal.get(payment_id).details["card_masked"]
        page = yield self.signed_in()
        response = yield page.request("GET", "/")
        self.assertIn("approved 1", response.text)  # payments today, by outcome
        self.assertIn("12.34 EUR", response.text)
        self.assertIn(masked, response.text)
        self.assertIsNone(re.search(r"\d{13,19}", response.text))

    @inlineCallbacks
    def test_the_bridge_the_journal_and_each_terminal_are_described(self):
        # issue 16: version, uptime, certificate end date; journal size, free disk, last fsync; a terminal's
        # type, address and when it last answered
        from bridge import __version__
        from bridge.status.facts import certificate_facts
        from bridge.status.page import when

        proto = yield self.open()
        yield self.pay(proto, "till-1")
        page = yield self.signed_in()
        text = (yield page.request("GET", "/")).text

        def shown(section, label):
            block = text.split(f'id="{section}"')[1].split("</section>")[0].split("</article>")[0]
            return re.search(rf"<dt>{re.escape(label)}</dt><dd>([^<]*)</dd>", block).group(1)

        self.assertEqual(shown("bridge", "version"), __version__)
        self.assertRegex(shown("bridge", "up for"), r"^\d+ (s|min)$")
        not_after = certificate_facts(self.daemon.config.tls_certificate)["not_after"]
        self.assertTrue(shown("bridge", "certificate ends").startswith(when(not_after) + " (in "))
        self.assertEqual(shown("bridge", "clients connected"), "1")
        self.assertRegex(shown("journal", "size"), r"^\d+(\.\d)? (KiB|MiB)$")
        self.assertRegex(shown("journal", "disk free"), r"^\d+(\.\d)? (KiB|MiB|GiB)$")
        self.assertEqual(shown("journal", "writable"), "yes")
        self.assertRegex(shown("journal", "last write (fsync)"), r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d .* \(\d+\.\d ms\)$")
        self.assertEqual(shown("terminal-till-1", "type"), "caisse-ap-tcp")
        self.assertEqual(shown("terminal-till-1", "address or device"), self.addresses["till-1"])
        record = self.daemon.payments.journal.get(self.daemon.payments.journal.list(terminal="till-1")[0].id)
        self.assertEqual(shown("terminal-till-1", "last seen"), when(record.updated))
        self.assertEqual(shown("terminal-till-2", "last seen"), "no answer among its last payments")

    # -- resolving ----------------------------------------------------------------------------------

    @inlineCallbacks
    def test_an_unknown_payment_resolved_on_the_page_is_journaled_as_terminal_bridge_resolve_does(self):
        proto = yield self.open()
        by_cli = yield self.pay(proto, "till-2")
        by_page = yield self.pay(proto, "till-2")
        page = yield self.signed_in()
        home = yield page.request("GET", "/")
        self.assertIn("2 payments await a decision", home.text)
        self.assertIn("<dd>unknown 2</dd>", home.text)  # payments today, by state
        self.assertIn(f'id="unknown-{by_page}"', home.text)
        yield cli_resolve(reactor, self.url, self.creds, self.fingerprint, None,
                          {"payment_id": by_cli, "outcome": "approved", "note": "receipt shows approved",
                           "authorisation": "123456"}, echo=lambda line: None)
        form = {"csrf": csrf_of(home.text), "payment_id": by_page, "outcome": "approved", "note": "receipt shows "
                "approved", "authorisation": "123456", "operator": "Marie Curie"}
        response = yield page.request("POST", "/resolve", form)
        self.assertEqual((response.status, response.header("Location")), (303, "/"))
        home = yield page.request("GET", "/")
        self.assertIn(f"Payment {by_page} recorded as approved by Marie Curie.", home.text)
        self.assertIn("None: every payment's outcome is known.", home.text)
        self.assertIn("<dd>approved 2</dd>", home.text)  # kept current by the events
        # the terminal's last link problem is still told in words once the payments it ended are resolved
        block = home.text.split('id="terminal-till-2"')[1].split("</article>")[0]
        self.assertIn("its last payment lost the link", block)
        self.assertIn("The connection to the payment terminal was lost", block)

        journal = self.daemon.payments.journal
        page_record, cli_record = journal.get(by_page), journal.get(by_cli)
        self.assertEqual((page_record.state, page_record.reason_code, page_record.reason_message),
                         (cli_record.state, cli_record.reason_code, cli_record.reason_message))
        self.assertEqual(page_record.details["resolved_by"], "status page: Marie Curie")
        self.assertEqual(cli_record.details["resolved_by"], self.creds.client_id)
        for details in (page_record.details, cli_record.details):
            details.pop("resolved_by")
        self.assertEqual(page_record.details, cli_record.details)
        page_steps, cli_steps = journal.transitions(by_page), journal.transitions(by_cli)
        self.assertEqual([(t["state"], t["code"]) for t in page_steps], [(t["state"], t["code"]) for t in cli_steps])
        self.assertEqual(page_steps[-1]["actor"], "status page: Marie Curie")
        # the client that started the payment hears of it like of any other change
        yield wait_for(lambda: any(e["payment"]["id"] == by_page and e["payment"]["state"] == "approved"
                                   for e in proto.events), "the resolution's event")

    @inlineCallbacks
    def test_a_resolve_without_the_csrf_token_or_from_another_site_changes_nothing(self):
        proto = yield self.open()
        payment_id = yield self.pay(proto, "till-2")
        page = yield self.signed_in()
        home = yield page.request("GET", "/")
        form = {"payment_id": payment_id, "outcome": "approved", "note": "receipt", "operator": "Eve"}
        response = yield page.request("POST", "/resolve", dict(form, csrf="forged"))
        self.assertEqual(response.status, 403)
        response = yield page.request("POST", "/resolve", dict(form, csrf=csrf_of(home.text)),
                                      headers={"Origin": "https://evil.example"})
        self.assertEqual(response.status, 403)
        response = yield self.page().request("POST", "/resolve", dict(form, csrf=csrf_of(home.text)))
        self.assertEqual(response.status, 401)  # the token without the session cookie
        self.assertEqual(self.daemon.payments.journal.get(payment_id).state, "unknown")

    @inlineCallbacks
    def test_a_resolve_without_a_name_or_a_note_is_refused_in_words_and_changes_nothing(self):
        proto = yield self.open()
        payment_id = yield self.pay(proto, "till-2")
        page = yield self.signed_in()
        home = yield page.request("GET", "/")
        form = {"csrf": csrf_of(home.text), "payment_id": payment_id, "outcome": "approved", "note": "receipt",
                "operator": "  "}
        yield page.request("POST", "/resolve", form)
        home = yield page.request("GET", "/")
        self.assertIn("Write your name", home.text)
        yield page.request("POST", "/resolve", dict(form, operator="Marie", note=""))
        home = yield page.request("GET", "/")
        self.assertIn("Not recorded: Say in &#x27;note&#x27; what the resolution is based on", home.text)
        yield page.request("POST", "/resolve", dict(form, operator="Marie", outcome="maybe"))
        self.assertEqual(self.daemon.payments.journal.get(payment_id).state, "unknown")


class BusyTerminalTests(TestCase, StatusBridge):
    timeout = 30

    @inlineCallbacks
    def test_a_terminal_running_a_payment_is_shown_busy(self):
        silent, address = yield start_simulator(self, reactor, SimulatorScript(outcome="never"))
        # the terminal's default answer time (180 s), so the payment runs until the terminal goes away below
        yield self.start_bridge(self, {}, extra=f"[terminal:till-1]\ntype = caisse-ap-tcp\naddress = {address}\n")
        self.addCleanup(silent.drop_connections)  # before the bridge stops, which waits for a running payment
        page = self.page()
        yield page.login()
        proto = yield self.open()
        started = yield proto.call("payment.start", {"terminal": "till-1", "amount": 1234, "currency": "EUR"})
        yield wait_for(lambda: any(e["payment"]["state"] == "in_progress" for e in proto.events), "in progress")
        shown = []

        @inlineCallbacks
        def busy_shown():
            block = (yield page.request("GET", "/fragment")).text.split('id="terminal-till-1"')[1]
            shown.append(block.split("</h3>")[0])
            return 'class="state">busy with a payment<' in shown[-1]

        for _ in range(100):  # the page reads its facts at most once a second
            if (yield busy_shown()):
                break
            yield sleep(0.1)
        self.assertIn("busy with a payment", shown[-1])
        yield silent.drop_connections()  # the terminal goes away: the payment ends (unknown), the till is idle
        yield wait_for(lambda: any(e["payment"]["id"] == started["id"] and e["payment"]["final"]
                                   for e in proto.events), "the payment's end")


class UplinkDownTests(TestCase, StatusBridge):
    timeout = 30

    @inlineCallbacks
    def test_an_uplink_that_cannot_reach_its_cloud_is_named(self):
        import os

        _, approver = yield start_simulator(self, reactor)
        extra = unreachable_uplink(os.path.abspath(self.mktemp()))
        yield self.start_bridge(self, {"till-1": approver}, extra=extra)
        service = self.daemon.uplinks.services[0]
        yield wait_for(lambda: service.status.data.get("last_error"), "the uplink's first error")
        page = self.page()
        yield page.login()
        response = yield page.request("GET", "/")
        self.assertIn("Needs attention: uplink odoo cannot reach the cloud.", response.text)
        block = response.text.split('id="uplink-odoo"')[1].split("</article>")[0]
        self.assertIn("not connected", block)
        self.assertIn(service.status.data["last_error"].split(":")[0], block)


class UplinkUpTests(UplinkEndToEnd):
    """An uplink that reaches its (fake) Odoo: connected, its bus up, and when its last fetch worked."""

    @inlineCallbacks
    def test_an_uplink_that_reaches_its_cloud_shows_its_bus_and_its_last_fetch(self):
        from bridge.status.page import when

        with open(self.config_path, "a") as f:
            f.write("[status]\nlisten = 127.0.0.1:0\n")
        daemon = yield self.start_bridge()
        auth.write_password_file(daemon.config.status.password_file, PASSWORD)
        yield self.bus_open()
        service = daemon.uplinks.services[0]
        yield wait_for(lambda: service.status.data.get("fetched_at") is not None, "the uplink's first fetch")
        page = PageClient(daemon.status_page.port.getHost().port, daemon.config.tls_certificate)
        yield page.login()
        before = service.status.data["fetched_at"]
        text = (yield page.request("GET", "/")).text
        after = service.status.data["fetched_at"]  # a fetch may run meanwhile (a wake-up from the bus)
        block = text.split('id="uplink-odoo"')[1].split("</article>")[0]
        self.assertIn('<span class="state">connected</span>', block)
        self.assertIn("<dt>bus</dt><dd>connected</dd>", block)
        shown = block.split("<dt>last fetch</dt><dd>")[1].split("</dd>")[0]
        self.assertIn(shown, (when(before), when(after)))
