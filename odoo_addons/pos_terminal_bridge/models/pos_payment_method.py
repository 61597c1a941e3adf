"""The "Terminal bridge" payment method: the POS pays on a terminal of a shop's bridge.

The POS calls the tb_* methods below with the payment line's uuid as the command id, so that a retry (a double
click, a reload, a second screen) finds the payment already started instead of charging again.
"""

import logging

from odoo import api, fields, models
from odoo.exceptions import AccessError, UserError, ValidationError

_logger = logging.getLogger(__name__)

TERMINAL_BRIDGE = "terminal_bridge"
#: The answers the cashier can give about a payment whose outcome the bridge does not know.
RESOLUTIONS = {"paid": "approved", "not_paid": "failed"}


class PosPaymentMethod(models.Model):
    _inherit = "pos.payment.method"

    tb_bridge_id = fields.Many2one(
        "terminal.bridge", string="Bridge", ondelete="restrict",
        help="The shop's terminal bridge that the card terminal is connected to.",
    )
    tb_terminal_id = fields.Many2one(
        "terminal.bridge.terminal", string="Terminal", ondelete="restrict",
        domain="[('bridge_id', '=', tb_bridge_id)]",
        help="The terminal of the bridge that takes the payments of this method (its name on the bridge).",
    )
    tb_method = fields.Selection(
        [("card", "Card"), ("cheque", "Cheque")], string="Pay by", default="card",
        help="Card: the customer pays by card. Cheque: a Caisse-AP terminal with a cheque printer fills the "
             "customer's cheque.",
    )

    def _get_payment_terminal_selection(self):
        return super()._get_payment_terminal_selection() + [(TERMINAL_BRIDGE, self.env._("Terminal bridge"))]

    @api.model
    def _load_pos_data_fields(self, config):
        return [*super()._load_pos_data_fields(config), "tb_method", "tb_terminal_id"]

    @api.onchange("tb_bridge_id")
    def _onchange_tb_bridge_id(self):
        if self.tb_terminal_id and self.tb_terminal_id.bridge_id != self.tb_bridge_id:
            self.tb_terminal_id = False

    @api.constrains("use_payment_terminal", "tb_bridge_id", "tb_terminal_id")
    def _check_terminal_bridge(self):
        for method in self:
            if method.use_payment_terminal != TERMINAL_BRIDGE:
                continue
            if not method.tb_bridge_id or not method.tb_terminal_id:
                raise ValidationError(self.env._("A payment method paid through a terminal bridge needs its bridge and "
                                        "the terminal of that bridge."))
            if method.tb_terminal_id.bridge_id != method.tb_bridge_id:
                raise ValidationError(self.env._("The terminal %(terminal)s is not a terminal of the bridge %(bridge)s.",
                                        terminal=method.tb_terminal_id.display_name,
                                        bridge=method.tb_bridge_id.display_name))

    # The POS's calls. Each checks the POS right, then works as superuser on the bridge's records, which a
    # cashier cannot read (they hold the bridge's secrets' neighbours).

    def _tb_check_access(self):
        self.ensure_one()
        if not self.env.su and not self.env.user.has_group("point_of_sale.group_pos_user"):
            raise AccessError(self.env._("Only Point of Sale users can pay through a terminal bridge."))
        if self.use_payment_terminal != TERMINAL_BRIDGE:
            raise UserError(self.env._("The payment method %s does not pay through a terminal bridge.", self.name))

    def _tb_payment(self, command_id):
        return self.env["terminal.bridge.payment"].sudo().search([("command_id", "=", command_id)], limit=1)

    def _tb_attempts(self, line_uuid):
        """The payments started for one POS payment line: its uuid, then "<uuid>/2", "<uuid>/3"... newest first."""
        if not line_uuid or not isinstance(line_uuid, str) or "/" in line_uuid or "%" in line_uuid or "_" in line_uuid:
            return self.env["terminal.bridge.payment"].sudo().search([("command_id", "=", line_uuid or "")])
        return self.env["terminal.bridge.payment"].sudo().search(
            ["|", ("command_id", "=", line_uuid), ("command_id", "=like", line_uuid + "/%")], order="id desc")

    def _tb_minor_units(self, amount, currency):
        """The amount in the currency's minor units (12.34 EUR -> 1234), as the bridge counts it."""
        minor = round(abs(float(amount)) * 10 ** currency.decimal_places)
        if minor <= 0:
            raise UserError(self.env._("The amount to pay must be more than zero."))
        return minor

    def _tb_pos_config(self, data):
        config = self.env["pos.config"].browse(int(data.get("pos_config_id") or 0)).exists()
        return config

    def _tb_link(self, payment, data):
        """Remember which POS, order and method started the payment (the first call says it)."""
        if payment.pos_config_id:
            return
        values = {"pos_payment_method_id": self.id}
        config = self._tb_pos_config(data)
        if config:
            values["pos_config_id"] = config.id
        if isinstance(data.get("order_uuid"), str):
            values["pos_order_uuid"] = data["order_uuid"][:64]
        payment.sudo().write(values)

    @api.model
    def tb_lost_lines(self, config_id):
        """Payments of this POS that may have charged a card but whose payment line Odoo has not recorded.

        A POS page reloaded before it saved a new payment line loses the line, not the payment: the POS puts
        these lines back on their orders when it loads.
        """
        if not self.env.su and not self.env.user.has_group("point_of_sale.group_pos_user"):
            raise AccessError(self.env._("Only Point of Sale users can pay through a terminal bridge."))
        since = fields.Datetime.subtract(fields.Datetime.now(), days=2)
        payments = self.env["terminal.bridge.payment"].sudo().search([
            ("pos_config_id", "=", int(config_id)), ("create_date", ">=", since),
            ("state", "not in", ("declined", "cancelled", "failed")), ("pos_order_uuid", "!=", False),
        ])
        lines = {}
        for payment in payments.sorted("id"):
            line_uuid = payment.command_id.split("/")[0]
            lines[line_uuid] = payment  # the newest attempt of each line
        recorded = set(self.env["pos.payment"].sudo().search([("uuid", "in", list(lines))]).mapped("uuid"))
        return [
            dict(payment.to_client_dict(), line_uuid=line_uuid, pos_order_uuid=payment.pos_order_uuid,
                 payment_method_id=payment.pos_payment_method_id.id)
            for line_uuid, payment in lines.items() if line_uuid not in recorded
        ]

    def _tb_line_busy(self, command_id):
        """Why a new attempt on this payment line would charge twice, or None.

        A payment line's attempts are "<uuid>", "<uuid>/2"...; a new one may start only when every earlier one
        ended unpaid (declined, cancelled, failed). A second screen on the same order, or a page that missed the
        news, could otherwise start "<uuid>/2" while "<uuid>" is on the terminal or approved. The same command id
        asked again is not a new attempt: it returns its payment.
        """
        if self._tb_payment(command_id):
            return None
        line_uuid = command_id.split("/")[0]
        taken = self._tb_attempts(line_uuid).filtered(lambda p: p.state not in ("declined", "cancelled", "failed"))
        if not taken:
            return None
        labels = dict(taken.fields_get(["state"])["state"]["selection"])
        state = labels.get(taken[0].state, taken[0].state)
        return self.env._(
            "This payment line already has a payment on the terminal (%(state)s): it is not charged again. "
            "Wait for its result, on this screen or the other one showing the order.", state=state,
        )

    def _tb_error(self, message):
        return {"error": message}

    def _tb_client_dict(self, payment):
        result = payment.to_client_dict()
        # The bridge's sentence is in the cashier's words already; the POS also needs the amount in currency
        # units to compare with the line.
        return result

    def tb_send_payment(self, data):
        """Pay (or refund without an original) ``data['amount']`` on this method's terminal.

        data: command_id (the POS payment line's uuid), amount (in currency units, as the POS line shows it),
        currency (ISO code), reference (the order's name), pos_config_id, kind ('debit' or 'refund').
        Returns the payment as ``to_client_dict()`` says, or {'error': sentence}.
        """
        self._tb_check_access()
        command_id = data.get("command_id")
        if not command_id or not isinstance(command_id, str):
            return self._tb_error(self.env._("The POS sent no payment line id; reload the page and try again."))
        currency = self.env["res.currency"].search([("name", "=", data.get("currency"))], limit=1)
        if not currency:
            return self._tb_error(self.env._("Unknown currency %s.", data.get("currency")))
        busy = self._tb_line_busy(command_id)
        if busy:
            return self._tb_error(busy)
        kind = "refund" if data.get("kind") == "refund" else "debit"
        try:
            amount = self._tb_minor_units(data.get("amount") or 0, currency)
            bridge = self.sudo().tb_bridge_id
            payment = bridge.start_payment(
                self.sudo().tb_terminal_id, amount, currency, command_id=command_id,
                method=self.tb_method or "card", kind=kind, reference=data.get("reference") or None,
            )
        except UserError as error:
            return self._tb_error(str(error.args[0]) if error.args else str(error))
        self._tb_link(payment, data)
        _logger.info("POS payment %s queued on %s for %s %s", command_id, bridge.display_name, amount,
                     currency.name)
        return self._tb_client_dict(payment)

    def tb_refund(self, data):
        """Pay back ``data['amount']`` of the payment line ``data['refund_of']`` (a uuid of the refunded order).

        Through payment.refund on the original bridge payment when it was paid through the bridge and approved;
        otherwise as a refund payment of its own (kind 'refund', the bridge's ``refund`` right).
        """
        self._tb_check_access()
        original = self._tb_refunded(data)
        if not original:
            return self.tb_send_payment(dict(data, kind="refund"))
        command_id = data.get("command_id")
        if not command_id or not isinstance(command_id, str):
            return self._tb_error(self.env._("The POS sent no payment line id; reload the page and try again."))
        busy = self._tb_line_busy(command_id)
        if busy:
            return self._tb_error(busy)
        try:
            amount = self._tb_minor_units(data.get("amount") or 0, original.currency_id)
            payment = original.refund(amount=amount, command_id=command_id)
        except UserError as error:
            return self._tb_error(str(error.args[0]) if error.args else str(error))
        self._tb_link(payment, data)
        return self._tb_client_dict(payment)

    def _tb_refunded(self, data):
        """The approved bridge payment a refund pays back: of the refunded line, else of the refunded order."""
        uuids = [data["refund_of"]] if data.get("refund_of") else []
        if not uuids and data.get("refunded_order_id"):
            order = self.env["pos.order"].browse(int(data["refunded_order_id"])).exists()
            uuids = order.payment_ids.filtered(lambda p: p.payment_method_id == self and p.amount > 0).mapped("uuid")
        for line_uuid in uuids:
            for payment in self._tb_attempts(line_uuid):
                if payment.kind == "debit" and payment.state == "approved":
                    return payment
        return None

    def tb_status(self, line_uuid):
        """Where the newest payment of this POS payment line stands ({'state': False} when none was started)."""
        self._tb_check_access()
        payment = self._tb_attempts(line_uuid)[:1]
        command_id = line_uuid
        if not payment:
            return {"command_id": command_id, "state": False}
        return self._tb_client_dict(payment)

    def tb_cancel(self, command_id):
        """Ask the terminal to cancel; whether it did arrives with the payment's next state."""
        self._tb_check_access()
        payment = self._tb_payment(command_id)
        if not payment:
            return {"command_id": command_id, "state": False}
        if not payment.is_final:
            try:
                payment.action_cancel()
            except UserError as error:
                return dict(self._tb_client_dict(payment), error=str(error.args[0]) if error.args else "")
        return self._tb_client_dict(payment)

    def tb_resolve(self, command_id, answer, cashier=None):
        """The cashier's answer about an unknown payment: 'paid' (on the terminal's receipt) or 'not_paid'."""
        self._tb_check_access()
        if answer not in RESOLUTIONS:
            raise UserError(self.env._("The answer must be 'paid' or 'not_paid'."))
        payment = self._tb_payment(command_id)
        if not payment:
            return {"command_id": command_id, "state": False}
        if payment.state != "unknown" or payment.resolved_by:
            return self._tb_client_dict(payment)  # settled, or an answer already on its way: one answer only
        cashier = (cashier or self.env.user.name or "").strip()[:64]
        if answer == "paid":
            note = self.env._("the terminal shows it paid (cashier: %(cashier)s)", cashier=cashier)
        else:
            note = self.env._("the terminal shows it not paid (cashier: %(cashier)s)", cashier=cashier)
        payment.resolve(RESOLUTIONS[answer], note, user=self.env.user)
        return self._tb_client_dict(payment)
