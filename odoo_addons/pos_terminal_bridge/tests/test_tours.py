"""The cashier's side in headless Chromium (Odoo's tours), against the real bridge daemon.

The daemon, its simulated Caisse-AP terminals and the TLS front come from terminal_bridge's BridgeBench; each
payment method of the POS pays on one simulated terminal whose script decides the outcome. A tour waits for
what the POS shows; these tests then check what Odoo and the terminal recorded. Run without the daemon
(bench.start not called), every tour below but the first fails: the POS never hears back.
"""

import json
import threading
import time
from unittest.mock import patch

import requests

from odoo import release
from odoo.tests import tagged

from odoo.addons.terminal_bridge.tests import bridge_process
from odoo.addons.terminal_bridge.tests.bridge_process import BridgeBench

from .test_payment_method import TerminalBridgePosCase

# Scripts of the simulated terminals these tours need besides BridgeBench's own (approve, decline, abandon, never).
bridge_process.OUTCOMES.setdefault("drop", ["--disconnect", "--delay", "0.3"])  # link lost: unknown at once
bridge_process.OUTCOMES.setdefault("slow", ["--outcome", "approve", "--delay", "6"])
bridge_process.OUTCOMES.setdefault("slow-abandon", ["--outcome", "abandon", "--delay", "6"])
bridge_process.OUTCOMES.setdefault("slower-abandon", ["--outcome", "abandon", "--delay", "15"])

#: The POS's payment methods: name -> (the terminal's name on the bridge, its script).
METHODS = {
    "Card approves": ("till-ok", "approve"),
    "Card declines": ("till-declines", "decline"),
    "Card abandons": ("till-abandons", "abandon"),
    "Card loses link": ("till-drops", "drop"),
    "Card slow": ("till-slow", "slow"),
    "Card waits": ("till-waits", "slow-abandon"),
    "Card waits long": ("till-waits-long", "slower-abandon"),
}


class SecondScreen(threading.Thread):
    """A second POS screen on the order the tour pays: a client of Odoo with its own login and session.

    It is told the payment line the first screen (the tour's browser) sends, as a screen showing the same order
    knows it, then does through Odoo's JSON-RPC what the POS's payment interface does: asks where the line's
    payment stands (``tb_status``), presses pay on the same line (``tb_send_payment``, same uuid and amount),
    tries a next attempt of the line (``<uuid>/2``, what a screen that missed the news would send), and follows
    the payment until it ends. What it got is kept in ``seen`` for the test to check.
    """

    def __init__(self, test, method, login="pos_admin"):
        super().__init__(daemon=True)
        self.base = f"http://127.0.0.1:{test.http_port()}"
        self.database = test.env.cr.dbname
        self.method_id = method.id
        self.login = login
        self.line = None  # the first screen's data for tb_send_payment, once it has sent it
        self.line_sent = threading.Event()
        self.seen = {}
        self.error = None

    def call(self, session, method, *args):
        response = session.post(
            f"{self.base}/web/dataset/call_kw/pos.payment.method/{method}",
            json={"jsonrpc": "2.0", "method": "call", "params": {
                "model": "pos.payment.method", "method": method, "args": [[self.method_id], *args], "kwargs": {},
            }},
            timeout=60,
        )
        body = response.json()
        if "error" in body:
            raise AssertionError(f"{method}: {body['error']}")
        return body["result"]

    def run(self):
        try:
            if not self.line_sent.wait(120):
                raise AssertionError("the first screen never sent its payment")
            with requests.Session() as session:
                answer = session.post(f"{self.base}/web/session/authenticate", json={
                    "jsonrpc": "2.0", "method": "call",
                    "params": {"db": self.database, "login": self.login, "password": self.login},
                }, timeout=60).json()
                if not (answer.get("result") or {}).get("uid"):
                    raise AssertionError(f"the second screen could not log in: {answer}")
                uuid = self.line["command_id"]
                self.seen["status"] = self.call(session, "tb_status", uuid)
                self.seen["pay_again"] = self.call(session, "tb_send_payment", dict(self.line))
                self.seen["next_attempt"] = self.call(
                    session, "tb_send_payment", dict(self.line, command_id=f"{uuid}/2"))
                deadline = time.monotonic() + 90
                status = self.seen["status"]
                while not status.get("is_final") and time.monotonic() < deadline:
                    time.sleep(0.5)
                    status = self.call(session, "tb_status", uuid)
                self.seen["final"] = status
        except Exception as error:  # noqa: BLE001 - reported by the test
            self.error = error


class TerminalBridgeTourCase(TerminalBridgePosCase):

    def setUp(self):
        super().setUp()
        self.bench = BridgeBench(self)
        self.daemon_at_login = False

    def start_bench(self, *names):
        """Start the simulated terminals of these methods, pair the box, give the POS those methods.

        The daemon itself is stopped again: on Odoo 19 the test thread uses the database cursor until the
        browser is logged in, and a daemon's request meanwhile would share it. The tour's login starts it
        (``daemon_at_login``), or a test starts it when it wants.
        """
        terminals = dict(METHODS[name] for name in names)
        bridge = self.bench.start(terminals)
        self.bench.stop_bridge()
        methods = self.env["pos.payment.method"]
        for name in names:
            terminal = self.env["terminal.bridge.terminal"].create({"bridge_id": bridge.id, "name": METHODS[name][0]})
            methods |= self.env["pos.payment.method"].create({
                "name": name,
                "journal_id": self.bank_journal.id,
                "use_payment_terminal": "terminal_bridge",
                "tb_bridge_id": bridge.id,
                "tb_terminal_id": terminal.id,
            })
        self.main_pos_config.write({"payment_method_ids": [(6, 0, (self.bank_payment_method | methods).ids)]})
        self.main_pos_config.with_user(self.pos_user).open_ui()
        self.daemon_at_login = True
        return bridge

    def spawn_daemon(self):
        """Start the daemon without waiting for it (a request thread may call this)."""
        self.bench.start_bridge(wait=False)

    def authenticate(self, *args, **kwargs):
        result = super().authenticate(*args, **kwargs)
        # 19.0 serves only the browser's requests during a tour: let the daemon's through too, from now on.
        if hasattr(self, "http_request_allow_all"):
            self.http_request_allow_all = True
        if self.daemon_at_login:
            self.daemon_at_login = False
            self.spawn_daemon()
        return result

    def tour(self, name, **kwargs):
        try:
            self.start_pos_tour(name, **kwargs)
        except AssertionError as error:
            raise AssertionError(f"{error}\n{self.bench.logs()}") from error
        finally:
            if hasattr(self, "http_request_allow_all"):
                self.http_request_allow_all = False
        self.env.invalidate_all()
        self.bench.hold_requests()  # the checks that follow read the database while the daemon may still call Odoo

    def payments(self):
        return self.env["terminal.bridge.payment"].sudo().search(
            [("pos_config_id", "=", self.main_pos_config.id)], order="id")

    def order(self):
        return self.env["pos.order"].search([("config_id", "=", self.main_pos_config.id)], order="id desc", limit=1)


@tagged("post_install", "-at_install")
class TestToursWithoutBridge(TerminalBridgePosCase):
    """What the POS does while the bridge has not fetched the payment yet (no daemon at all)."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tb_method.name = "Card approves"

    def test_cancel_before_the_bridge_fetched_it(self):
        self.main_pos_config.with_user(self.pos_user).open_ui()
        model = type(self.env["pos.payment.method"])
        send = model.tb_send_payment

        def slow_send(method, data):
            # A loaded Odoo answers the pay request late: the cashier presses Cancel before the answer. The POS must
            # still cancel the payment it queued (it once took it for never started: seen once in a full run on a
            # loaded machine).
            answer = send(method, data)
            time.sleep(2)
            return answer

        with patch.object(model, "tb_send_payment", slow_send):
            self.start_pos_tour("TerminalBridgeCancelBeforeSend")
        payment = self.env["terminal.bridge.payment"].sudo().search([("pos_config_id", "=", self.main_pos_config.id)])
        self.assertEqual(len(payment), 1)
        self.assertEqual((payment.state, payment.cancel_status), ("cancelled", "before_send"))


@tagged("post_install", "-at_install")
class TestToursWithBridge(TerminalBridgeTourCase):

    def test_pay_approved(self):
        self.start_bench("Card approves")
        self.tour("TerminalBridgePayApproved")
        payment = self.payments()
        self.assertEqual(payment.state, "approved")
        order = self.order()
        self.assertEqual(order.state, "paid")
        line = order.payment_ids.filtered(lambda p: p.payment_method_id.use_payment_terminal == "terminal_bridge")
        self.assertEqual(line.uuid, payment.command_id)
        self.assertTrue(payment.authorization)
        self.assertEqual(line.payment_method_authcode, payment.authorization)
        self.assertEqual(line.card_no, payment.card_masked[-4:])
        self.assertEqual(line.transaction_id, payment.pay_ref)
        self.assertEqual(len(self.bench.terminal_requests("till-ok")), 1)

    def test_declined_then_paid(self):
        self.start_bench("Card declines", "Card approves")
        self.tour("TerminalBridgeDeclinedThenPaid")
        self.assertEqual(self.payments().mapped("state"), ["declined", "approved"])
        self.assertEqual(self.order().state, "paid")

    def test_abandoned_then_retried_is_a_new_attempt(self):
        self.start_bench("Card abandons")
        self.tour("TerminalBridgeAbandonedThenRetried")
        payments = self.payments()
        self.assertEqual(payments.mapped("state"), ["cancelled", "cancelled"])
        first, second = payments.mapped("command_id")
        self.assertEqual(second, first + "/2")
        self.assertEqual(len(self.bench.terminal_requests("till-abandons")), 2)

    def test_cancel_from_the_pos_while_on_the_terminal(self):
        self.start_bench("Card waits")
        self.tour("TerminalBridgeCancelOnTerminal")
        payment = self.payments()
        self.assertEqual(payment.state, "cancelled")
        self.assertIn("payment.cancel", payment.command_ids.mapped("op"))

    def test_unknown_resolved_paid(self):
        self.start_bench("Card loses link")
        self.tour("TerminalBridgeUnknownPaid")
        payment = self.payments()
        self.assertEqual(payment.state, "approved")
        self.assertIn("paid", payment.resolution_note)
        self.assertEqual(self.order().state, "paid")

    def test_unknown_resolved_not_paid(self):
        self.start_bench("Card loses link")
        self.tour("TerminalBridgeUnknownNotPaid")
        payment = self.payments()
        self.assertEqual(payment.state, "failed")
        self.assertIn("not paid", payment.resolution_note)
        self.assertNotEqual(self.order().state, "paid")

    def test_page_reloaded_mid_payment(self):
        self.start_bench("Card slow")
        self.tour("TerminalBridgeReload")
        payment = self.payments()
        self.assertEqual(payment.state, "approved")
        self.assertEqual(self.order().payment_ids.filtered("transaction_id").transaction_id, payment.pay_ref)
        self.assertEqual(len(self.bench.terminal_requests("till-slow")), 1)

    def test_bridge_stopped_then_started_pays_once(self):
        self.start_bench("Card approves")
        self.daemon_at_login = False  # the box is off when the cashier pays
        test, model = self, type(self.env["pos.payment.method"])
        send = model.tb_send_payment

        def send_then_start_the_bridge(method, data):
            answer = send(method, data)
            if not test.bench.daemon.alive:  # queued while the box was off; now it comes back (once)
                test.spawn_daemon()
            return answer

        with patch.object(model, "tb_send_payment", send_then_start_the_bridge):
            self.tour("TerminalBridgeBridgeStartsLate")
        payment = self.payments()
        self.assertEqual(payment.state, "approved")
        starts = payment.command_ids.filtered(lambda c: c.op == "payment.start")
        self.assertEqual(len(starts), 1)
        self.assertEqual(len(self.bench.terminal_requests("till-ok")), 1)
        self.assertEqual(self.order().state, "paid")

    def test_linked_refund_through_the_original_payment(self):
        self.start_bench("Card approves")
        self.tour("TerminalBridgeRefund")
        original, refund = self.payments()
        self.assertEqual((original.kind, original.state), ("debit", "approved"))
        self.assertEqual((refund.kind, refund.state), ("refund", "approved"))
        self.assertEqual(refund.refund_of_id, original)
        self.assertEqual(refund.amount, original.amount)
        self.assertEqual(refund.command_ids.filtered(lambda c: c.op == "payment.refund").uuid, refund.command_id)
        self.assertEqual(len(self.bench.terminal_requests("till-ok")), 2)

    def test_partial_refund_through_the_original_payment(self):
        self.start_bench("Card approves")
        self.tour("TerminalBridgePartialRefund")
        original, refund = self.payments()
        self.assertEqual((original.kind, original.state), ("debit", "approved"))
        self.assertEqual((refund.kind, refund.state), ("refund", "approved"))
        self.assertEqual(refund.refund_of_id, original)
        self.assertEqual(original.amount, self.minor(3.96))  # two desk pads
        self.assertEqual(refund.amount, self.minor(1.98))  # one came back
        self.assertEqual(original.refundable_amount, self.minor(1.98))
        command = refund.command_ids.filtered(lambda c: c.op == "payment.refund")
        self.assertEqual(json.loads(command.args)["amount"], self.minor(1.98))
        refund_order = self.order()
        self.assertEqual(refund_order.state, "paid")
        self.assertAlmostEqual(refund_order.amount_total, -1.98)
        self.assertEqual(refund_order.payment_ids.filtered("transaction_id").transaction_id, refund.pay_ref)
        self.assertEqual(len(self.bench.terminal_requests("till-ok")), 2)
        # what is left can still be refunded, and no more
        answer = self.env["pos.payment.method"].search([("name", "=", "Card approves")]).tb_refund(
            self.pay_data("refund-too-much", amount=2.00, refund_of=original.command_id))
        self.assertIn("Only 1.98", answer.get("error", ""))

    def test_second_screen_on_the_same_order(self):
        self.start_bench("Card slow")
        method = self.env["pos.payment.method"].search([("name", "=", "Card slow")])
        other = SecondScreen(self, method)
        test, model = self, type(method)
        send = model.tb_send_payment

        def send_and_tell_the_other_screen(method, data):
            answer = send(method, data)
            if other.line is None and not answer.get("error"):
                other.line = dict(data)
                other.line_sent.set()
            return answer

        other.start()
        test.addCleanup(other.join, 1)
        with patch.object(model, "tb_send_payment", send_and_tell_the_other_screen):
            self.tour("TerminalBridgeSecondScreen")
            with self.bench.requests_allowed():  # it may still be asking: let its requests through meanwhile
                other.join(120)
        self.env.invalidate_all()
        self.assertFalse(other.is_alive(), "the second screen is still following the payment")
        if other.error:
            raise other.error
        payment = self.payments()
        self.assertEqual(len(payment), 1, payment.mapped("command_id"))  # the next attempt was never created
        uuid = other.line["command_id"]
        seen = other.seen
        self.assertEqual(seen["status"]["command_id"], uuid)  # it learnt the payment from the server
        self.assertTrue(seen["status"]["state"])
        self.assertEqual(seen["pay_again"]["command_id"], uuid)  # pay again: the same payment, not a new one
        self.assertNotIn("error", seen["pay_again"])
        self.assertIn("not charged again", seen["next_attempt"].get("error", ""))
        self.assertEqual(seen["final"]["state"], "approved")  # both screens end on the same result
        self.assertEqual(payment.state, "approved")
        line = self.order().payment_ids.filtered("transaction_id")
        self.assertEqual(self.order().state, "paid")
        self.assertEqual(line.uuid, uuid)
        self.assertEqual(line.payment_method_authcode, seen["final"]["authorization"])
        self.assertEqual(len(payment.command_ids.filtered(lambda c: c.op == "payment.start")), 1)
        self.assertEqual(len(self.bench.terminal_requests("till-slow")), 1)  # charged once

    def test_force_done_does_not_mark_a_pending_payment_paid(self):
        self.start_bench("Card waits long")
        self.tour("TerminalBridgeForceDoneGuard")
        payment = self.payments()
        self.assertEqual(payment.state, "cancelled")
        self.assertFalse(self.env["pos.order"].search(
            [("config_id", "=", self.main_pos_config.id), ("state", "in", ("paid", "done", "invoiced"))]))

    def test_force_done_does_not_mark_an_unknown_payment_paid(self):
        if release.version_info[0] < 19:
            self.skipTest("Odoo 18 offers no Force done on a line waiting for the card")
        self.start_bench("Card loses link")
        self.tour("TerminalBridgeForceDoneUnknown")
        payment = self.payments()
        self.assertEqual(payment.state, "failed")
        self.assertIn("not paid", payment.resolution_note)
        self.assertFalse(self.env["pos.order"].search(
            [("config_id", "=", self.main_pos_config.id), ("state", "in", ("paid", "done", "invoiced"))]))
