"""The server side of the POS payment method: what each call of the POS queues for the bridge."""

import json

from odoo import release
from odoo.exceptions import AccessError, ValidationError
from odoo.tests import tagged

from odoo.addons.point_of_sale.tests.test_frontend import TestPointOfSaleHttpCommon


class TerminalBridgePosCase(TestPointOfSaleHttpCommon):
    """A paired bridge with one terminal, and the shop's POS paying through it."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.bridge = cls.env["terminal.bridge"].create({"name": "Shop box"})
        cls.bridge.sudo().write({"state": "paired"})
        cls.terminal = cls.env["terminal.bridge.terminal"].create({"bridge_id": cls.bridge.id, "name": "till-1"})
        cls.tb_method = cls.env["pos.payment.method"].create({
            "name": "Card on till-1",
            "journal_id": cls.bank_journal.id,
            "use_payment_terminal": "terminal_bridge",
            "tb_bridge_id": cls.bridge.id,
            "tb_terminal_id": cls.terminal.id,
        })
        cls.main_pos_config.write({"payment_method_ids": [(4, cls.tb_method.id)]})
        cls.currency = cls.main_pos_config.currency_id

    def pay_data(self, command_id, amount=12.34, **extra):
        return dict(
            command_id=command_id, amount=amount, currency=self.currency.name, reference="Shop/0001",
            pos_config_id=self.main_pos_config.id, **extra,
        )

    def commands(self, payment):
        return self.env["terminal.bridge.command"].sudo().search([("payment_id", "=", payment.id)], order="id")

    def minor(self, amount):
        return round(amount * 10 ** self.currency.decimal_places)


@tagged("post_install", "-at_install")
class TestPaymentMethod(TerminalBridgePosCase):

    def test_terminal_type_is_offered(self):
        selection = dict(self.env["pos.payment.method"]._fields["use_payment_terminal"].selection(
            self.env["pos.payment.method"]))
        self.assertEqual(selection.get("terminal_bridge"), "Terminal bridge")

    def test_terminal_of_another_bridge_is_refused(self):
        other = self.env["terminal.bridge"].create({"name": "Other box"})
        other_terminal = self.env["terminal.bridge.terminal"].create({"bridge_id": other.id, "name": "till-9"})
        with self.assertRaises(ValidationError):
            self.tb_method.write({"tb_terminal_id": other_terminal.id})

    def test_the_pos_loads_the_method_fields(self):
        fields = self.env["pos.payment.method"]._load_pos_data_fields(self.main_pos_config)
        self.assertIn("tb_method", fields)

    def test_pay_twice_with_one_line_queues_one_payment(self):
        first = self.tb_method.tb_send_payment(self.pay_data("line-uuid-1"))
        again = self.tb_method.tb_send_payment(self.pay_data("line-uuid-1"))
        self.assertEqual(first["state"], "queued")
        self.assertEqual(again["command_id"], "line-uuid-1")
        payment = self.env["terminal.bridge.payment"].sudo().search([("command_id", "=", "line-uuid-1")])
        self.assertEqual(len(payment), 1)
        self.assertEqual(payment.amount, self.minor(12.34))
        self.assertEqual(payment.pos_config_id, self.main_pos_config)
        commands = self.commands(payment)
        self.assertEqual(commands.mapped("op"), ["payment.start"])
        self.assertEqual(json.loads(commands.args)["terminal"], "till-1")

    def test_same_line_other_amount_is_an_error_not_a_second_payment(self):
        self.tb_method.tb_send_payment(self.pay_data("line-uuid-2"))
        answer = self.tb_method.tb_send_payment(self.pay_data("line-uuid-2", amount=99.0))
        self.assertIn("error", answer)
        self.assertEqual(self.env["terminal.bridge.payment"].sudo().search_count(
            [("command_id", "=", "line-uuid-2")]), 1)

    def test_cheque_method_asks_for_a_cheque(self):
        self.tb_method.tb_method = "cheque"
        self.tb_method.tb_send_payment(self.pay_data("line-uuid-3"))
        payment = self.env["terminal.bridge.payment"].sudo().search([("command_id", "=", "line-uuid-3")])
        self.assertEqual(json.loads(self.commands(payment).args)["method"], "cheque")

    def test_a_user_without_the_pos_right_cannot_pay(self):
        user = self.env["res.users"].create({"name": "No POS", "login": "no_pos_tb", "password": "no_pos_tb"})
        groups = "group_ids" if "group_ids" in user._fields else "groups_id"  # 19.0 renamed it
        user.write({groups: [(6, 0, [self.env.ref("base.group_user").id])]})
        self.assertFalse(user.has_group("point_of_sale.group_pos_user"))
        with self.assertRaises(AccessError):
            self.tb_method.with_user(user).tb_send_payment(self.pay_data("line-uuid-4"))

    def test_status_of_a_line_never_sent(self):
        self.assertEqual(self.tb_method.tb_status("never-sent"), {"command_id": "never-sent", "state": False})

    def test_a_change_reaches_the_pos_screens_over_the_bus(self):
        self.tb_method.tb_send_payment(self.pay_data("line-uuid-5"))
        payment = self.env["terminal.bridge.payment"].sudo().search([("command_id", "=", "line-uuid-5")])
        self.env.cr.precommit.data.pop("bus.bus.values", None)
        payment.write({"state": "approved", "authorization": "100001"})
        payment._tb_state_changed()
        sent = [json.loads(v["message"]) for v in self.env.cr.precommit.data.get("bus.bus.values", [])]
        ours = [m for m in sent if m["type"].endswith("TERMINAL_BRIDGE_PAYMENT")]
        self.assertEqual(len(ours), 1, sent)
        self.assertEqual(ours[0]["payload"]["state"], "approved")
        self.assertEqual(ours[0]["payload"]["authorization"], "100001")

    def test_refund_of_a_bridge_payment_goes_through_payment_refund(self):
        self.tb_method.tb_send_payment(self.pay_data("paid-line"))
        original = self.env["terminal.bridge.payment"].sudo().search([("command_id", "=", "paid-line")])
        original.write({"state": "approved"})
        answer = self.tb_method.tb_refund(self.pay_data("refund-line", amount=5.0, refund_of="paid-line"))
        refund = self.env["terminal.bridge.payment"].sudo().search([("command_id", "=", "refund-line")])
        self.assertEqual(answer["kind"], "refund")
        self.assertEqual(refund.refund_of_id, original)
        self.assertEqual(refund.amount, self.minor(5.0))
        self.assertEqual(self.commands(refund).mapped("op"), ["payment.refund"])

    def test_refund_without_a_bridge_original_is_a_refund_payment(self):
        self.tb_method.tb_refund(self.pay_data("refund-alone", amount=5.0, refund_of="paid-elsewhere"))
        refund = self.env["terminal.bridge.payment"].sudo().search([("command_id", "=", "refund-alone")])
        self.assertEqual(refund.kind, "refund")
        self.assertFalse(refund.refund_of_id)
        command = self.commands(refund)
        self.assertEqual(command.op, "payment.start")
        self.assertEqual(json.loads(command.args)["kind"], "refund")

    def test_unknown_resolved_by_the_cashier(self):
        self.tb_method.tb_send_payment(self.pay_data("unknown-line"))
        payment = self.env["terminal.bridge.payment"].sudo().search([("command_id", "=", "unknown-line")])
        payment.write({"state": "unknown"})
        self.tb_method.tb_resolve("unknown-line", "paid", "Jane Cashier")
        command = self.commands(payment).filtered(lambda c: c.op == "payment.resolve")
        args = json.loads(command.args)
        self.assertEqual(args["outcome"], "approved")
        self.assertIn("Jane Cashier", args["note"])
        # a second screen, or the dialog asked again before the bridge answered: nothing more is sent
        answer = self.tb_method.tb_resolve("unknown-line", "not_paid", "John Cashier")
        self.assertTrue(answer["resolution_pending"])
        self.assertEqual(len(self.commands(payment).filtered(lambda c: c.op == "payment.resolve")), 1)
        self.assertIn("Jane Cashier", payment.resolution_note)

    def test_cancel_asks_the_bridge(self):
        self.tb_method.tb_send_payment(self.pay_data("cancel-line"))
        payment = self.env["terminal.bridge.payment"].sudo().search([("command_id", "=", "cancel-line")])
        self.commands(payment).write({"state": "done"})  # the bridge fetched it
        self.tb_method.tb_cancel("cancel-line")
        self.assertIn("payment.cancel", self.commands(payment).mapped("op"))

    def test_the_pos_bundle_holds_this_versions_files_only(self):
        paths = [p[0] for p in self.env["ir.asset"]._get_asset_paths("point_of_sale._assets_pos", {})]
        mine = [p for p in paths if p.startswith("/pos_terminal_bridge/")]
        major = release.version_info[0]
        self.assertIn(f"/pos_terminal_bridge/static/src/odoo{major}/install.js", mine)
        self.assertIn("/pos_terminal_bridge/static/src/core/payment_terminal_bridge.js", mine)
        self.assertFalse([p for p in mine if "/odoo" in p and f"/odoo{major}/" not in p], mine)

    def test_status_is_the_newest_attempt_of_the_line(self):
        self.tb_method.tb_send_payment(self.pay_data("retried-line"))
        first = self.env["terminal.bridge.payment"].sudo().search([("command_id", "=", "retried-line")])
        first.write({"state": "declined"})
        self.tb_method.tb_send_payment(self.pay_data("retried-line/2"))
        self.assertEqual(self.tb_method.tb_status("retried-line")["command_id"], "retried-line/2")
        self.assertEqual(self.tb_method.tb_status("retried-line")["state"], "queued")

    def test_refund_finds_the_approved_attempt(self):
        self.tb_method.tb_send_payment(self.pay_data("twice-line"))
        self.env["terminal.bridge.payment"].sudo().search([("command_id", "=", "twice-line")]).state = "declined"
        self.tb_method.tb_send_payment(self.pay_data("twice-line/2"))
        approved = self.env["terminal.bridge.payment"].sudo().search([("command_id", "=", "twice-line/2")])
        approved.state = "approved"
        self.tb_method.tb_refund(self.pay_data("refund-twice", amount=12.34, refund_of="twice-line"))
        refund = self.env["terminal.bridge.payment"].sudo().search([("command_id", "=", "refund-twice")])
        self.assertEqual(refund.refund_of_id, approved)

    def test_lines_lost_by_a_reload_are_found_again(self):
        self.tb_method.tb_send_payment(self.pay_data("lost-line", order_uuid="order-1"))
        self.tb_method.tb_send_payment(self.pay_data("declined-line", order_uuid="order-1"))
        self.env["terminal.bridge.payment"].sudo().search([("command_id", "=", "declined-line")]).state = "declined"
        lost = self.tb_method.tb_lost_lines(self.main_pos_config.id)
        self.assertEqual([(p["line_uuid"], p["pos_order_uuid"], p["payment_method_id"]) for p in lost],
                         [("lost-line", "order-1", self.tb_method.id)])

    def test_partial_refunds_up_to_what_is_left(self):
        self.tb_method.tb_send_payment(self.pay_data("paid-10", amount=10.0))
        original = self.env["terminal.bridge.payment"].sudo().search([("command_id", "=", "paid-10")])
        original.write({"state": "approved"})
        self.assertEqual(original.refundable_amount, self.minor(10.0))
        first = self.tb_method.tb_refund(self.pay_data("refund-4", amount=4.0, refund_of="paid-10"))
        self.assertNotIn("error", first)
        self.assertEqual(original.refundable_amount, self.minor(6.0))  # a refund under way counts as taken
        too_much = self.tb_method.tb_refund(self.pay_data("refund-7", amount=7.0, refund_of="paid-10"))
        self.assertIn("Only 6.00", too_much.get("error", ""))
        self.assertFalse(self.env["terminal.bridge.payment"].sudo().search([("command_id", "=", "refund-7")]))
        again = self.tb_method.tb_refund(self.pay_data("refund-4", amount=4.0, refund_of="paid-10"))
        self.assertEqual(again["command_id"], "refund-4")  # the same refund asked again is no new refund
        self.env["terminal.bridge.payment"].sudo().search([("command_id", "=", "refund-4")]).state = "declined"
        self.assertEqual(original.refundable_amount, self.minor(10.0))  # a declined refund gave nothing back
        rest = self.tb_method.tb_refund(self.pay_data("refund-10", amount=10.0, refund_of="paid-10"))
        self.assertNotIn("error", rest)
        self.assertEqual(original.refundable_amount, 0)

    def test_no_next_attempt_while_the_line_is_on_the_terminal(self):
        self.tb_method.tb_send_payment(self.pay_data("busy-line"))
        answer = self.tb_method.tb_send_payment(self.pay_data("busy-line/2"))
        self.assertIn("not charged again", answer.get("error", ""))
        self.assertFalse(self.env["terminal.bridge.payment"].sudo().search([("command_id", "=", "busy-line/2")]))
        for state in ("approved", "unknown"):
            self.env["terminal.bridge.payment"].sudo().search([("command_id", "=", "busy-line")]).state = state
            self.assertIn("error", self.tb_method.tb_send_payment(self.pay_data("busy-line/2")))
        self.env["terminal.bridge.payment"].sudo().search([("command_id", "=", "busy-line")]).state = "declined"
        self.assertEqual(self.tb_method.tb_send_payment(self.pay_data("busy-line/2"))["state"], "queued")
