"""The status page in a real browser (headless Chromium over the DevTools protocol): sign-in, a wrong password,
each state, and an unknown payment resolved through the form; a screenshot of each state.

Screenshots go to the test's output folder (trial's mktemp), or to $STATUS_SCREENSHOTS when set (docs/images/
holds a copy shown in docs/operations.md).
"""

import os

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

from bridge.terminals.caisse_ap.simulator import SimulatorScript
from tests import chromium
from tests.status_support import PASSWORD, StatusBridge, closed_port, start_simulator, unreachable_uplink, wait_for


class BrowserTest(TestCase, StatusBridge):
    timeout = 120

    def setUp(self):
        why = chromium.available()
        if why:
            raise SkipTest(f"no real browser for the status page tests: {why}")
        self.shots = os.environ.get("STATUS_SCREENSHOTS") or os.path.abspath(self.mktemp())

    @inlineCallbacks
    def browser(self, **options):
        browser = yield deferToThread(chromium.Chromium, chromium.spki_pin(self.daemon.config.tls_certificate),
                                      **options)
        self.addCleanup(deferToThread, browser.close)
        return browser

    def step(self, function, *args):
        return deferToThread(function, *args)

    @property
    def base(self):
        return f"https://127.0.0.1:{self.page_port}"

    @inlineCallbacks
    def sign_in(self, browser, password=PASSWORD):
        yield self.step(browser.goto, self.base + "/")
        yield self.step(browser.submit, "document.getElementById('password').value = %r; "
                                        "document.querySelector('form button').click()" % password)

    def shot(self, browser, name):
        return self.step(browser.screenshot, os.path.join(self.shots, name))


class SignInAndStates(BrowserTest):
    @inlineCallbacks
    def setUp(self):
        super().setUp()
        _, approver = yield start_simulator(self, reactor)
        _, dropper = yield start_simulator(self, reactor, SimulatorScript(disconnect=True))
        yield self.start_bridge(self, {"till-1": approver, "till-2": dropper, "till-3": closed_port()})

    @inlineCallbacks
    def test_a_wrong_password_is_refused_then_the_right_one_shows_all_is_well(self):
        browser = yield self.browser()
        yield self.step(browser.goto, self.base + "/")
        url = yield self.step(browser.evaluate, "location.pathname")
        self.assertEqual(url, "/login")
        yield self.shot(browser, "status-login.png")
        yield self.sign_in(browser, "not the password")
        text = yield self.step(browser.text)
        self.assertIn("Wrong password.", text)
        yield self.shot(browser, "status-wrong-password.png")
        cookies = yield self.step(browser.call, "Network.getAllCookies")
        self.assertEqual(cookies["cookies"], [])

        yield self.sign_in(browser)
        text = yield self.step(browser.text, "#health")
        self.assertEqual(text, "All is well: 3 terminals ready to take payments.")
        cookies = yield self.step(browser.call, "Network.getAllCookies")
        [cookie] = cookies["cookies"]
        self.assertEqual((cookie["name"], cookie["secure"], cookie["httpOnly"], cookie["sameSite"]),
                         ("tb_status", True, True, "Strict"))
        self.assertEqual((yield self.step(browser.evaluate, "document.cookie")), "")  # HttpOnly: not for scripts
        yield self.shot(browser, "status-all-well.png")

    @inlineCallbacks
    def test_the_page_is_readable_on_a_phone_and_without_javascript(self):
        browser = yield self.browser(width=390, height=844, mobile=True)
        yield self.sign_in(browser)
        overflow = yield self.step(browser.evaluate, "document.documentElement.scrollWidth <= window.innerWidth")
        self.assertTrue(overflow, "the page is wider than a phone's screen")
        yield self.shot(browser, "status-phone.png")
        yield self.step(browser.call, "Emulation.setScriptExecutionDisabled", {"value": True})
        yield self.step(browser.goto, self.base + "/")
        self.assertEqual((yield self.step(browser.text, "#health")),
                         "All is well: 3 terminals ready to take payments.")

    @inlineCallbacks
    def test_each_state_appears_without_a_reload_and_an_unknown_payment_is_resolved_through_the_form(self):
        browser = yield self.browser()
        yield self.sign_in(browser)
        yield self.step(browser.evaluate, "window.notReloaded = true")
        proto = yield self.open()

        yield self.pay(proto, "till-3")
        yield self.step(browser.wait_for, "document.getElementById('health').innerText.includes('till-3')")
        self.assertEqual((yield self.step(browser.text, "#health")),
                         "Needs attention: terminal till-3 cannot take payments.")
        self.assertIn("cannot be reached", (yield self.step(browser.text, "#terminal-till-3")))
        self.assertTrue((yield self.step(browser.evaluate, "window.notReloaded")), "the page reloaded")
        yield self.shot(browser, "status-terminal-unreachable.png")

        payment_id = yield self.pay(proto, "till-2")
        yield self.step(browser.wait_for, f"document.getElementById('unknown-{payment_id}') !== null")
        self.assertIn("1 payment awaits a decision", (yield self.step(browser.text, "#health")))
        said = yield self.step(browser.text, f"#unknown-{payment_id}")
        self.assertIn("check the terminal's receipt", said)
        self.assertTrue((yield self.step(browser.evaluate, "window.notReloaded")), "the page reloaded")
        yield self.shot(browser, "status-unknown-waiting.png")

        form = f"document.querySelector('#unknown-{payment_id} form')"
        yield self.step(browser.submit, f"""(function () {{
            var form = {form};
            form.querySelector('input[value=approved]').checked = true;
            form.querySelector('input[name=authorisation]').value = '654321';
            form.querySelector('input[name=note]').value = 'receipt shows approved, auth 654321';
            form.querySelector('input[name=operator]').value = 'Marie Curie';
            form.querySelector('button').click();
        }}())""")
        text = yield self.step(browser.text)
        self.assertIn(f"Payment {payment_id} recorded as approved by Marie Curie.", text)
        self.assertNotIn(f"unknown-{payment_id}", (yield self.step(browser.evaluate, "document.body.innerHTML")))
        yield self.shot(browser, "status-unknown-resolved.png")

        record = self.daemon.payments.journal.get(payment_id)
        self.assertEqual((record.state, record.reason_code), ("approved", "resolved"))
        self.assertEqual(record.details["resolved_by"], "status page: Marie Curie")
        self.assertEqual(record.details["resolution_note"], "receipt shows approved, auth 654321")
        self.assertEqual(record.details["authorisation"], "654321")
        self.assertEqual(self.daemon.payments.journal.transitions(payment_id)[-1]["actor"],
                         "status page: Marie Curie")


class UplinkDown(BrowserTest):
    @inlineCallbacks
    def test_an_uplink_that_cannot_reach_its_cloud(self):
        _, approver = yield start_simulator(self, reactor)
        yield self.start_bridge(self, {"till-1": approver}, extra=unreachable_uplink(os.path.abspath(self.mktemp())))
        service = self.daemon.uplinks.services[0]
        yield wait_for(lambda: service.status.data.get("last_error"), "the uplink's first error")
        browser = yield self.browser()
        yield self.sign_in(browser)
        self.assertEqual((yield self.step(browser.text, "#health")),
                         "Needs attention: uplink odoo cannot reach the cloud.")
        self.assertIn("not connected", (yield self.step(browser.text, "#uplink-odoo")))
        yield self.shot(browser, "status-uplink-down.png")
