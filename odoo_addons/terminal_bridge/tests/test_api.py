"""The Python API other modules use: start, idempotency, cancel, refund, resolve, what a UI reads."""

from odoo.exceptions import AccessError, UserError
from odoo.tests import TransactionCase, new_test_user, tagged

from .common import paired_bridge


@tagged("post_install", "-at_install")
class TestApi(TransactionCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.bridge, cls.answer = paired_bridge(cls.env)

    def commands(self, op=None):
        commands = self.bridge.command_ids
        return commands.filtered(lambda c: c.op == op) if op else commands

    def test_start_payment_queues_one_command(self):
        payment = self.bridge.start_payment("till-1", 1234, "eur", command_id="odoo-1", reference="Order 7")
        self.assertEqual((payment.state, payment.amount, payment.currency_id.name, payment.terminal_id.name),
                         ("queued", 1234, "EUR", "till-1"))
        again = self.bridge.start_payment(payment.terminal_id, 1234, self.env.ref("base.EUR"), command_id="odoo-1")
        self.assertEqual(again, payment)
        self.assertEqual(len(self.commands("payment.start")), 1)
        self.assertEqual(self.commands().uuid, "odoo-1")
        self.assertEqual(self.commands()._args(), {"terminal": "till-1", "amount": 1234, "currency": "EUR"})
        with self.assertRaises(UserError):
            self.bridge.start_payment("till-1", 1235, "EUR", command_id="odoo-1")
        with self.assertRaises(UserError):
            self.bridge.start_payment("till-1", 1234, "EUR", command_id="odoo-1", kind="refund")
        self.assertEqual(len(self.commands()), 1)

    def test_start_payment_new_id_and_options(self):
        payment = self.bridge.start_payment("till-1", 500, "EUR", method="cheque", kind="refund")
        self.assertRegex(payment.command_id, r"^[0-9a-f-]{36}$")
        self.assertEqual(self.commands()._args(), {"terminal": "till-1", "amount": 500, "currency": "EUR",
                                                   "kind": "refund", "method": "cheque"})

    def test_bad_arguments(self):
        for args in (("till-1", 0, "EUR"), ("till-1", 12.5, "EUR"), ("till-1", True, "EUR"), ("till-1", 10**12, "EUR"),
                     ("till-1", 100, "XXX"), ("bad name!", 100, "EUR")):
            with self.subTest(args=args), self.assertRaises(UserError):
                self.bridge.start_payment(*args)
        with self.assertRaises(UserError):
            self.bridge.start_payment("till-1", 100, "EUR", method="cash")
        unpaired = self.env["terminal.bridge"].create({"name": "New"})
        with self.assertRaises(UserError):
            unpaired.start_payment("till-1", 100, "EUR")
        self.assertFalse(self.env["terminal.bridge.payment"].search([]))

    def test_bus_notification_on_queue(self):
        self.bridge.start_payment("till-1", 1234, "EUR", command_id="odoo-bus")
        self.env.cr.precommit.run()  # what the commit does: the bus rows are written last in the transaction
        notification = self.env["bus.bus"].sudo().search([], order="id desc", limit=1)
        self.assertIn('"terminal.bridge"', notification.channel)
        self.assertIn(f"{self.bridge.id}", notification.channel)
        self.assertIn('"terminal_bridge/command"', notification.message)
        self.assertIn("odoo-bus", notification.message)
        self.assertNotIn(self.answer["uplink"]["channel_token"], notification.channel)

    def test_cancel_before_the_bridge_fetched(self):
        payment = self.bridge.start_payment("till-1", 1234, "EUR")
        payment.action_cancel()
        self.assertEqual((payment.state, payment.cancel_status), ("cancelled", "before_send"))
        self.assertEqual(self.commands("payment.start").state, "cancelled")
        self.assertEqual(self.env["terminal.bridge.command"]._serve(self.bridge), [])
        with self.assertRaises(UserError):
            payment.action_cancel()

    def test_cancel_after_the_bridge_fetched(self):
        payment = self.bridge.start_payment("till-1", 1234, "EUR")
        self.assertEqual(len(self.env["terminal.bridge.command"]._serve(self.bridge)), 1)
        payment.action_cancel()
        self.assertEqual(payment.state, "queued")
        cancel = self.commands("payment.cancel")
        self.assertEqual(cancel.payment_id, payment)
        # Not served before the bridge said which payment id it gave the payment.
        self.assertEqual([c["op"] for c in self.env["terminal.bridge.command"]._serve(self.bridge)], ["payment.start"])
        payment._apply_view({"id": "pay_9", "state": "accepted"})
        served = self.env["terminal.bridge.command"]._serve(self.bridge)
        self.assertEqual(served[1]["args"], {"payment_id": "pay_9"})

    def test_cancel_of_a_payment_the_bridge_refused_is_dropped(self):
        payment = self.bridge.start_payment("till-1", 1234, "EUR")
        self.env["terminal.bridge.command"]._serve(self.bridge)
        payment.action_cancel()
        payment._apply_error("unknown_terminal", "There is no terminal till-1.")
        self.assertEqual(self.env["terminal.bridge.command"]._serve(self.bridge)[0]["op"], "payment.start")
        self.assertEqual(self.commands("payment.cancel").state, "cancelled")

    def test_refund_and_resolve(self):
        payment = self.bridge.start_payment("till-1", 1234, "EUR")
        with self.assertRaises(UserError):
            payment.refund()
        payment._apply_view({"id": "pay_1", "state": "approved"})
        refund = payment.refund(amount=234, command_id="odoo-refund-1")
        self.assertEqual((refund.kind, refund.amount, refund.refund_of_id), ("refund", 234, payment))
        self.assertEqual(payment.refund(amount=234, command_id="odoo-refund-1"), refund)
        with self.assertRaises(UserError):
            payment.refund(amount=235, command_id="odoo-refund-1")
        served = {c["op"]: c for c in self.env["terminal.bridge.command"]._serve(self.bridge)}
        self.assertEqual(served["payment.refund"]["args"], {"amount": 234, "payment_id": "pay_1"})
        self.assertEqual(served["payment.refund"]["id"], "odoo-refund-1")
        self.assertEqual(refund.to_client_dict()["refund_of"], payment.command_id)

        unknown = self.bridge.start_payment("till-1", 99, "EUR")
        unknown._apply_view({"id": "pay_2", "state": "unknown"})
        with self.assertRaises(UserError):
            payment.resolve("approved", "receipt")
        with self.assertRaises(UserError):
            unknown.resolve("unknown", "receipt")
        unknown.resolve("approved", "receipt shows approved, auth 123456")
        self.assertEqual(unknown.resolution_note,
                         f"Resolved by {self.env.user.name} at the till: receipt shows approved, auth 123456")
        resolve = self.commands("payment.resolve")
        self.assertEqual(resolve._args()["outcome"], "approved")
        # one answer only: a second one (another screen, the dialog asked again) sends nothing
        self.assertTrue(unknown.to_client_dict()["resolution_pending"])
        with self.assertRaises(UserError):
            unknown.resolve("failed", "receipt shows nothing")
        self.assertEqual(len(self.commands("payment.resolve")), 1)
        self.assertIn("approved, auth 123456", unknown.resolution_note)

    def test_states_never_go_backwards(self):
        payment = self.bridge.start_payment("till-1", 1234, "EUR")
        payment._apply_view({"id": "pay_1", "state": "approved", "details": {"authorisation": "A1"}})
        payment._apply_view({"id": "pay_1", "state": "accepted"})
        payment._apply_error("late", "late")
        self.assertEqual((payment.state, payment.authorization), ("approved", "A1"))
        self.assertTrue(payment.to_client_dict()["is_final"])

    def test_pos_user_reads_and_starts_through_the_api_only(self):
        user = new_test_user(self.env, login="cashier", groups="base.group_user")
        bridge = self.bridge.with_user(user)
        payment = bridge.start_payment("till-1", 1234, "EUR")
        self.assertEqual(payment.to_client_dict()["state"], "queued")
        with self.assertRaises(AccessError):
            self.env["terminal.bridge.payment"].with_user(user).create({"command_id": "x", "bridge_id": bridge.id,
                                                                       "amount": 1, "currency_id": 1})
        with self.assertRaises(AccessError):
            bridge.read(["client_ref"])  # the secrets are for system administrators
        with self.assertRaises(AccessError):
            bridge.action_pair()
