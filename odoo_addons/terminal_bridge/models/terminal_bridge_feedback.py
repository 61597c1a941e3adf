import json

from odoo import fields, models

from .compat import HAS_CONSTRAINT


class TerminalBridgeFeedback(models.Model):
    """Every feedback post Odoo accepted, kept raw; (pay_ref, seq) makes a repeated post harmless."""

    _name = "terminal.bridge.feedback"
    _description = "Feedback from a terminal bridge"
    _order = "id desc"
    _rec_name = "pay_ref"

    bridge_id = fields.Many2one("terminal.bridge", readonly=True, ondelete="cascade", index=True)
    pay_ref = fields.Char(string="PAYID", required=True, readonly=True)
    seq = fields.Integer(string="TBSEQ", required=True, readonly=True)
    order_ref = fields.Char(string="ORDERID", readonly=True, index=True)
    status = fields.Char(string="STATUS", readonly=True)
    params = fields.Text(readonly=True, help="Every parameter received, SHASIGN excepted.")
    payment_id = fields.Many2one("terminal.bridge.payment", readonly=True, ondelete="set null", index=True)
    applied = fields.Boolean(readonly=True, help="False: stored only (unknown ORDERID, or older than one applied).")

    if HAS_CONSTRAINT:
        _pay_ref_seq_unique = models.Constraint("UNIQUE(pay_ref, seq)", "A feedback is stored once.")
    else:
        _sql_constraints = [("pay_ref_seq_unique", "UNIQUE(pay_ref, seq)", "A feedback is stored once.")]

    def _params(self):
        return json.loads(self.params or "{}")
