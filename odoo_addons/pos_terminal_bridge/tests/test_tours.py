"""The cashier's side in headless Chromium (Odoo's tours), against the real bridge daemon.

The daemon, its simulated Caisse-AP terminals and the TLS front come from terminal_bridge's BridgeBench; each
payment method of the POS pays on one simulated terminal whose script decides the outcome. A tour waits for
what the POS shows; these tests then check what Odoo and the terminal recorded. Run without the daemon
(bench.start not called), every tour below but the first fails: the POS never hears back.
"""

from unittest.mock import patch

from odoo.tests import tagged

from odoo.addons.terminal_bridge.tests import bridge_process
from odoo.addons.terminal_bridge.tests.bridge_process import BridgeBench

from .test_payment_method import TerminalBridgePosCase

# Scripts of the simulated terminals these tours need besides BridgeBench's own (approve, decline, abandon, never).
bridge_process.OUTCOMES.setdefault("drop", ["--disconnect", "--delay", "0.3"])  # link lost: unknown at once
bridge_process.OUTCOMES.setdefault("slow", ["--outcome", "approve", "--delay", "6"])
bridge_process.OUTCOMES.setdefault("slow-abandon", ["--outcome", "abandon", "--delay", "6"])

#: The POS's payment methods: name -> (the terminal's name on the bridge, its script).
METHODS = {
    "Card approves": ("till-ok", "approve"),
    "Card declines": ("till-declines", "decline"),
    "Card abandons": ("till-abandons", "abandon"),
    "Card loses link": ("till-drops", "drop"),
    "Card slow": ("till-slow", "slow"),
    "Card waits": ("till-waits", "slow-abandon"),
}


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
