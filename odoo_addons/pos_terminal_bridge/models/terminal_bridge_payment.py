"""Every change of a bridge payment started from a POS reaches that POS's screens over Odoo's bus."""

import logging

from odoo import fields, models

_logger = logging.getLogger(__name__)

#: The bus notification's name; the POS subscribes to it on its config's channel.
NOTIFICATION = "TERMINAL_BRIDGE_PAYMENT"


class TerminalBridgePayment(models.Model):
    _inherit = "terminal.bridge.payment"

    pos_config_id = fields.Many2one(
        "pos.config", string="Point of Sale", index="btree_not_null", ondelete="set null",
        help="The point of sale that started this payment: its screens are told of every change.",
    )

    pos_order_uuid = fields.Char(
        string="POS order", index="btree_not_null", readonly=True,
        help="The uuid of the POS order the payment line belongs to (to put the line back after a reload).",
    )
    pos_payment_method_id = fields.Many2one("pos.payment.method", string="POS payment method", readonly=True)

    def _tb_state_changed(self):
        result = super()._tb_state_changed()
        for payment in self:
            config = payment.sudo().pos_config_id
            if config:
                config._notify(NOTIFICATION, payment.to_client_dict())
        return result
