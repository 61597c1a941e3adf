from odoo import fields, models


class TerminalBridgePairWizard(models.TransientModel):
    """Shows a pairing code once. It is opened with the code in its context and never saved, so the code itself
    is kept nowhere in the database (only its SHA-256, in terminal.bridge.pairing)."""

    _name = "terminal.bridge.pair.wizard"
    _description = "Pair a terminal bridge"

    bridge_id = fields.Many2one("terminal.bridge", readonly=True)
    code = fields.Char(string="Pairing code", readonly=True)
    command = fields.Char(string="Command to type on the box", readonly=True)
    expires = fields.Datetime(string="Valid until", readonly=True)
