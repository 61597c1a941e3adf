import json
import logging
import time

from odoo import fields, models

from ..tools import signing
from .compat import HAS_CONSTRAINT

_logger = logging.getLogger(__name__)

#: At most this many commands per /pending answer (docs/cloud-protocol.md).
MAX_PENDING = 50
#: At most this many bytes in a /pending answer, as the route writes it: the bridge reads no more.
MAX_PENDING_BYTES = 1024 * 1024
#: What the route writes around the served commands: {"commands": [...]} and ", " between two of them.
_ANSWER_FRAME = len(b'{"commands": []}')
_SEPARATOR = len(b", ")
#: Ops that name their payment when served (its bridge id, or its command id of at most 128 characters).
PAYMENT_NAMING_OPS = ("payment.cancel", "payment.refund", "payment.resolve", "payment.get")
#: The ops whose result describes one payment (a payment object).
PAYMENT_RESULT_OPS = ("payment.start", "payment.refund", "payment.get", "payment.resolve")


def answer_size(message):
    """The bytes ``message`` takes in the /pending answer (the route serializes it as Odoo's JSON responses do)."""
    return len(json.dumps(message, ensure_ascii=False).encode("utf-8"))


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
        """The bridge's queued commands, oldest first, each signed now with the inbound secret: at most
        MAX_PENDING of them and MAX_PENDING_BYTES of answer in all (the bridge reads no more)."""
        bridge = bridge.sudo()
        commands = self.sudo().search(
            [("bridge_id", "=", bridge.id), ("state", "=", "queued")], order="id", limit=MAX_PENDING
        )
        now = int(time.time())
        served = []
        out = self.browse()
        size = _ANSWER_FRAME
        for command in commands:
            args = command._args()
            if command.op in PAYMENT_NAMING_OPS:
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
            message = signing.signed(
                {"id": command.uuid, "op": command.op, "ts": now, "args": args}, bridge.secret_in, bridge.algorithm or "sha256"
            )
            alone = answer_size(message)
            if _ANSWER_FRAME + alone > MAX_PENDING_BYTES:
                # Never servable (queued before Odoo refused such commands): close it, or it blocks the queue.
                # Unless it was served before: the bridge may have run it, so it is not said refused (its payment's
                # feedback will tell); it is passed over, and the ones after it go.
                if command.served_count:
                    _logger.error(
                        "terminal bridge %s: %s %s, served before, is now larger than a /pending answer may be",
                        bridge.name,
                        command.op,
                        command.uuid,
                    )
                else:
                    command._refuse_unservable()
                continue
            cost = alone + (_SEPARATOR if served else 0)
            if size + cost > MAX_PENDING_BYTES:
                break  # the rest waits for the next fetch, oldest first
            size += cost
            served.append(message)
            out |= command
        for command in out:
            # A write on every served row: a concurrent withdrawal of the same command then conflicts.
            command.write({"served_date": fields.Datetime.now(), "served_count": command.served_count + 1})
        return served

    def _refuse_unservable(self):
        """Close a command too large for any /pending answer, as if the bridge had refused it: its payment (if
        any) fails with the reason, and the queue moves on."""
        self.ensure_one()
        _logger.warning(
            "terminal bridge %s: %s %s is larger than a /pending answer may be (%s bytes): refused",
            self.bridge_id.name,
            self.op,
            self.uuid,
            MAX_PENDING_BYTES,
        )
        message = self.env._(
            "The command is too large to send to the bridge (more than %s bytes); nothing was sent.", MAX_PENDING_BYTES
        )
        self._apply_reply({"re": self.uuid, "ok": False, "error": {"code": "message_too_large", "message": message}})

    def _apply_reply(self, reply):
        """Close this command with the bridge's signed ``reply`` (an /ack) and apply what it says."""
        self.ensure_one()
        ok = bool(reply.get("ok"))
        error = reply.get("error") if isinstance(reply.get("error"), dict) else {}
        code, message = str(error.get("code") or "")[:64], str(error.get("message") or "")[:500]
        self.write(
            {
                "state": "done",
                "reply": json.dumps(reply, ensure_ascii=False, sort_keys=True),
                "ok": ok,
                "error_code": code or False,
                "error_message": message or False,
                "acked_date": fields.Datetime.now(),
            }
        )
        bridge = self.bridge_id
        result = reply.get("result")
        payment = self.payment_id
        before = payment._watched() if payment else None
        if self.op == "terminal.list" and ok and isinstance(result, dict):
            self.env["terminal.bridge.terminal"].sudo()._update_from_list(bridge, result.get("terminals") or [])
        elif self.op == "terminal.status" and ok and isinstance(result, dict):
            terminal = bridge.terminal_ids.filtered(lambda t: t.name == result.get("name"))
            terminal.write({"state": str(result.get("state") or "")[:64] or False})
        elif payment and self.op in ("payment.start", "payment.refund"):
            if ok:
                payment._apply_view(result)
            else:
                payment._apply_error(code or "refused", message or "The bridge refused the payment.")
        elif payment and self.op in PAYMENT_RESULT_OPS and ok:
            payment._apply_view(result)
        elif payment and self.op == "payment.resolve" and payment.state == "unknown":
            # The bridge refused the answer (e.g. the payment ended meanwhile, or a right is missing): it is not
            # recorded anywhere, so the question is open again.
            payment.write({"resolved_by": False, "resolution_note": False})
        elif payment and self.op == "payment.cancel":
            if ok and isinstance(result, dict):
                payment._apply_view(result.get("payment"))
                status = result.get("cancel")
                payment.write(
                    {
                        "cancel_status": status if status in ("before_send", "requested", "on_terminal") else False,
                        "cancel_message": str(result.get("message") or "")[:500] or False,
                    }
                )
            else:
                payment.write({"cancel_status": False, "cancel_message": message or False})
        if payment:
            payment._changed_since(before)
