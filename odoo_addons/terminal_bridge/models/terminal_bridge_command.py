import json
import logging
import time

from odoo import fields, models

from ..tools import signing
from .compat import HAS_CONSTRAINT

_logger = logging.getLogger(__name__)

#: At most this many commands per /pending answer (docs/cloud-protocol.md).
MAX_PENDING = 50


class TerminalBridgeCommand(models.Model):
    """The queue of commands for a bridge: fetched by /pending, closed by /ack."""

    _name = "terminal.bridge.command"
    _description = "Command queued for a terminal bridge"
    _order = "id"
    _rec_name = "uuid"

    uuid = fields.Char(string="Command id", required=True, readonly=True, index=True)
    bridge_id = fields.Many2one("terminal.bridge", required=True, readonly=True, ondelete="cascade", index=True)
    op = fields.Char(required=True, readonly=True)
    args = fields.Text(readonly=True, default="{}")
    state = fields.Selection(
        [("queued", "Waiting for the bridge"), ("done", "Done"), ("cancelled", "Withdrawn")],
        default="queued",
        required=True,
        readonly=True,
        index=True,
    )
    served_date = fields.Datetime(readonly=True, help="When the bridge last fetched it.")
    served_count = fields.Integer(readonly=True)
    reply = fields.Text(readonly=True)
    ok = fields.Boolean(readonly=True)
    error_code = fields.Char(readonly=True)
    error_message = fields.Char(readonly=True)
    acked_date = fields.Datetime(readonly=True)
    payment_id = fields.Many2one("terminal.bridge.payment", readonly=True, ondelete="set null", index=True)

    if HAS_CONSTRAINT:
        _uuid_unique = models.Constraint("UNIQUE(uuid)", "A command id is used once.")
    else:
        _sql_constraints = [("uuid_unique", "UNIQUE(uuid)", "A command id is used once.")]

    def _args(self):
        try:
            value = json.loads(self.args or "{}")
        except ValueError:
            value = {}
        return value if isinstance(value, dict) else {}

    def _serve(self, bridge):
        """The bridge's queued commands, oldest first, each signed now with the inbound secret."""
        bridge = bridge.sudo()
        commands = self.sudo().search(
            [("bridge_id", "=", bridge.id), ("state", "=", "queued")], order="id", limit=MAX_PENDING
        )
        now = int(time.time())
        served = []
        out = self.browse()
        for command in commands:
            args = command._args()
            if command.op in ("payment.cancel", "payment.refund", "payment.resolve", "payment.get"):
                # These name the bridge's payment id, known once the starting command was acknowledged.
                target = command.payment_id.refund_of_id if command.op == "payment.refund" else command.payment_id
                if "payment_id" not in args and "command_id" not in args:
                    if target.pay_ref:
                        args["payment_id"] = target.pay_ref
                    elif command.op == "payment.get":
                        args["command_id"] = target.command_id
                    elif target.is_final:
                        # The bridge refused the payment before giving it an id: nothing left to act on.
                        command.write({"state": "cancelled"})
                        continue
                    else:
                        continue
            message = {"id": command.uuid, "op": command.op, "ts": now, "args": args}
            served.append(signing.signed(message, bridge.secret_in, bridge.algorithm or "sha256"))
            out |= command
        for command in out:
            # A write on every served row: a concurrent withdrawal of the same command then conflicts.
            command.write({"served_date": fields.Datetime.now(), "served_count": command.served_count + 1})
        return served
