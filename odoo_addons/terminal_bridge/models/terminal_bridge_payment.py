import logging
import uuid

from odoo import api, fields, models
from odoo.exceptions import UserError

from .compat import HAS_CONSTRAINT

_logger = logging.getLogger(__name__)

STATES = [
    ("queued", "Waiting for the bridge"),
    ("accepted", "Accepted"),
    ("in_progress", "On the terminal"),
    ("approved", "Approved"),
    ("declined", "Declined"),
    ("cancelled", "Cancelled"),
    ("failed", "Failed (not charged)"),
    ("unknown", "Unknown (check the receipt)"),
]
FINAL_STATES = frozenset({"approved", "declined", "cancelled", "failed", "unknown"})
RESOLVED_STATES = ("approved", "declined", "cancelled", "failed")
#: The states in which a payment took nothing (a refund in any other state counts as paid back, or maybe).
NOT_TAKEN = ("declined", "cancelled", "failed")
_RANK = {"queued": 0, "accepted": 1, "in_progress": 2}
#: Ogone STATUS -> state, for a feedback that carries no TBSTATE.
STATUS_STATES = {"9": "approved", "8": "approved", "2": "declined", "1": "cancelled", "0": "failed", "92": "unknown"}
#: What a change of these fields tells the hook.
WATCHED = (
    "state",
    "reason_code",
    "message",
    "authorization",
    "card_masked",
    "brand",
    "pay_ref",
    "cancel_status",
    "cancel_message",
)


def can_move(old, new):
    """True if a payment in ``old`` may go to ``new`` (never backwards; unknown only to a resolution)."""
    if old == new or new not in dict(STATES):
        return False
    if old == "unknown":
        return new in RESOLVED_STATES
    if old in FINAL_STATES:
        return False
    return new in FINAL_STATES or _RANK.get(new, 0) > _RANK.get(old, 0)


class TerminalBridgePayment(models.Model):
    """A payment (or refund) started through a bridge; ``command_id`` is its idempotency key and Ogone ORDERID."""

    _name = "terminal.bridge.payment"
    _description = "Payment through a terminal bridge"
    _order = "id desc"
    _rec_name = "command_id"

    command_id = fields.Char(required=True, readonly=True, index=True, copy=False)
    bridge_id = fields.Many2one("terminal.bridge", required=True, readonly=True, ondelete="restrict", index=True)
    company_id = fields.Many2one(related="bridge_id.company_id", store=True)
    terminal_id = fields.Many2one("terminal.bridge.terminal", readonly=True, ondelete="restrict")
    amount = fields.Integer(required=True, readonly=True, help="In minor units (cents).")
    currency_id = fields.Many2one("res.currency", required=True, readonly=True)
    kind = fields.Selection([("debit", "Payment"), ("refund", "Refund")], default="debit", required=True, readonly=True)
    method = fields.Selection([("card", "Card"), ("cheque", "Cheque")], default="card", required=True, readonly=True)
    reference = fields.Char(readonly=True, help="Free reference, e.g. the POS order.")
    refund_of_id = fields.Many2one("terminal.bridge.payment", readonly=True, ondelete="restrict")
    refund_ids = fields.One2many("terminal.bridge.payment", "refund_of_id", string="Refunds", readonly=True)
    refundable_amount = fields.Integer(
        compute="_compute_refundable_amount",
        help="In minor units: what is left to refund of this approved payment (refunds approved, under way or "
             "unknown count as taken, as on the bridge).",
    )
    state = fields.Selection(STATES, default="queued", required=True, readonly=True, index=True)
    is_final = fields.Boolean(compute="_compute_is_final")
    pay_ref = fields.Char(string="Bridge payment id", readonly=True, index=True)
    reason_code = fields.Char(readonly=True)
    message = fields.Char(readonly=True, help="The sentence for the cashier.")
    authorization = fields.Char(readonly=True)
    card_masked = fields.Char(readonly=True)
    brand = fields.Char(readonly=True)
    last_seq = fields.Integer(readonly=True, help="TBSEQ of the last feedback applied.")
    resolved_by = fields.Char(readonly=True)
    resolution_note = fields.Char(readonly=True)
    cancel_status = fields.Selection(
        [("before_send", "Cancelled before sending"), ("requested", "Cancel requested"), ("on_terminal", "Cancel on the terminal")],
        readonly=True,
    )
    cancel_message = fields.Char(readonly=True)
    command_ids = fields.One2many("terminal.bridge.command", "payment_id", string="Commands")
    feedback_ids = fields.One2many("terminal.bridge.feedback", "payment_id")

    if HAS_CONSTRAINT:
        _command_id_unique = models.Constraint("UNIQUE(command_id)", "A command id starts one payment.")
    else:
        _sql_constraints = [("command_id_unique", "UNIQUE(command_id)", "A command id starts one payment.")]

    @api.depends("state")
    def _compute_is_final(self):
        for payment in self:
            payment.is_final = payment.state in FINAL_STATES

    @api.depends("kind", "state", "amount", "refund_ids.state", "refund_ids.amount")
    def _compute_refundable_amount(self):
        for payment in self:
            if payment.kind != "debit" or payment.state != "approved":
                payment.refundable_amount = 0
                continue
            taken = payment.sudo().refund_ids.filtered(lambda refund: refund.state not in NOT_TAKEN)
            payment.refundable_amount = max(payment.amount - sum(taken.mapped("amount")), 0)

    @api.depends("command_id", "amount", "currency_id")
    def _compute_display_name(self):
        for payment in self:
            major = payment.amount / 10 ** (payment.currency_id.decimal_places or 0) if payment.currency_id else 0
            payment.display_name = f"{payment.reference or payment.command_id} ({major} {payment.currency_id.name or ''})"

    def _check_same(self, bridge, terminal, amount, currency, method, kind, refund_of):
        same = (
            self.bridge_id == bridge
            and self.terminal_id == terminal
            and self.amount == amount
            and self.currency_id == currency
            and self.method == method
            and self.kind == kind
            and self.refund_of_id == (refund_of or self.browse())
        )
        if not same:
            raise UserError(
                self.env._("The command id %s already started another payment (other terminal, amount or kind).", self.command_id)
            )

    # -- the Python API ---------------------------------------------------------------------------

    def action_cancel(self):
        """Ask for the payment to be cancelled; a payment the bridge never fetched is withdrawn at once."""
        for payment in self:
            payment.check_access("read")
            payment = payment.sudo()
            if payment.is_final:
                raise UserError(self.env._("The payment %(payment)s is already over (%(state)s).", payment=payment.command_id, state=payment.state))
            start = payment.command_ids.filtered(lambda c: c.op in ("payment.start", "payment.refund"))[:1]
            if start:
                self.env.cr.execute(
                    "SELECT served_count FROM terminal_bridge_command WHERE id = %s FOR UPDATE", [start.id]
                )
                start.invalidate_recordset(["served_count", "state"])
            if start and start.state == "queued" and not start.served_count:
                start.write({"state": "cancelled"})
                before = payment._watched()
                payment.write(
                    {
                        "state": "cancelled",
                        "cancel_status": "before_send",
                        "reason_code": "cancelled",
                        "message": self.env._("Cancelled before it reached the terminal: nothing was charged."),
                    }
                )
                payment._changed_since(before)
                continue
            payment.bridge_id._queue_command("payment.cancel", {}, payment=payment)
        return True

    def refund(self, amount=None, command_id=None):
        """Refund this approved payment (its whole amount by default; never more than is left to refund).

        Returns the refund's payment record."""
        self.ensure_one()
        self.check_access("read")
        original = self.sudo()
        if original.kind != "debit" or original.state != "approved":
            raise UserError(self.env._("Only an approved payment can be refunded."))
        if amount is not None and (isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0):
            raise UserError(self.env._("The refund amount must be a positive whole number of cents."))
        amount = original.amount if amount is None else amount
        Payment = self.env["terminal.bridge.payment"].sudo()
        if command_id:
            existing = Payment.search([("command_id", "=", command_id)], limit=1)
            if existing:
                existing._check_same(
                    original.bridge_id, original.terminal_id, amount, original.currency_id, original.method, "refund", original
                )
                return existing.with_env(self.env)
        # Two refunds at once (two screens) must not both fit in what is left: each writes the original's row, so
        # the second waits for the first and, once it committed, fails to serialise and is retried on what the
        # first left (a lock alone would not show it the first's refund under repeatable read).
        self.env.cr.execute("UPDATE terminal_bridge_payment SET write_date = write_date WHERE id = %s", [original.id])
        original.invalidate_recordset()
        left = original.refundable_amount
        if amount > left:
            digits = original.currency_id.decimal_places
            raise UserError(
                self.env._("Only %(left)s %(currency)s of this payment is left to refund; %(asked)s %(currency)s "
                           "were asked.", left=f"{left / 10 ** digits:.{digits}f}",
                           asked=f"{amount / 10 ** digits:.{digits}f}", currency=original.currency_id.name)
            )
        refund = Payment.create(
            {
                "command_id": command_id or str(uuid.uuid4()),
                "bridge_id": original.bridge_id.id,
                "terminal_id": original.terminal_id.id,
                "amount": amount,
                "currency_id": original.currency_id.id,
                "method": original.method,
                "kind": "refund",
                "reference": original.reference,
                "refund_of_id": original.id,
            }
        )
        original.bridge_id._queue_command("payment.refund", {"amount": amount}, command_id=refund.command_id, payment=refund)
        return refund.with_env(self.env)

    def resolve(self, outcome, note, user=None):
        """Settle an ``unknown`` payment from what the receipt or the bank shows; ``user`` (default: the
        current user) is named in the note."""
        return self._resolve(outcome, note, user or self.env.user)

    def _resolve(self, outcome, note, resolver):
        self.ensure_one()
        self.check_access("read")
        payment = self.sudo()
        if payment.state != "unknown":
            raise UserError(self.env._("Only a payment whose outcome is unknown can be resolved."))
        if payment.resolved_by:
            # One answer per unknown payment: a second one (another screen, a dialog asked again) must not send
            # the bridge another outcome while the first is on its way.
            raise UserError(self.env._("An answer about this payment is already being recorded by %(name)s.",
                                       name=payment.resolved_by))
        if outcome not in RESOLVED_STATES:
            raise UserError(self.env._("The outcome must be approved, declined, cancelled or failed."))
        if not note or not str(note).strip():
            raise UserError(self.env._("Say what the resolution is based on (e.g. 'receipt shows approved, auth 123456')."))
        words = self.env._("Resolved by %(name)s at the till: %(note)s", name=resolver.name, note=str(note).strip())[:500]
        payment.write({"resolved_by": resolver.name, "resolution_note": words})
        payment.bridge_id._queue_command(
            "payment.resolve", {"outcome": outcome, "note": words}, payment=payment
        )
        return True

    def to_client_dict(self):
        """What a user interface shows of this payment (JSON-able)."""
        self.ensure_one()
        payment = self.sudo()
        return {
            "command_id": payment.command_id,
            "state": payment.state,
            "is_final": payment.is_final,
            "amount": payment.amount,
            "currency": payment.currency_id.name,
            "message": payment.message or "",
            "reason_code": payment.reason_code or "",
            "authorization": payment.authorization or "",
            "card_masked": payment.card_masked or "",
            "brand": payment.brand or "",
            "cancel_status": payment.cancel_status or False,
            "cancel_message": payment.cancel_message or "",
            "pay_ref": payment.pay_ref or "",
            "kind": payment.kind,
            "refund_of": payment.refund_of_id.command_id or False,
            # An answer was given and goes to the bridge: don't ask the cashier again.
            "resolution_pending": payment.state == "unknown" and bool(payment.resolved_by),
        }

    def _tb_state_changed(self):
        """Hook: the state or details changed through an ack or a feedback (called once per transaction)."""
        for payment in self:
            _logger.info(
                "terminal bridge payment %s is now %s%s",
                payment.command_id,
                payment.state,
                f" ({payment.reason_code})" if payment.reason_code else "",
            )

    # -- what the routes apply ----------------------------------------------------------------------

    def _watched(self):
        return {name: self[name] for name in WATCHED}

    def _changed_since(self, before):
        if before != self._watched():
            self._tb_state_changed()

    def _apply_view(self, view):
        """Apply a payment object of the bridge (an ack's result); never moves a payment backwards."""
        if not isinstance(view, dict):
            return
        values = {}
        if isinstance(view.get("id"), str) and not self.pay_ref:
            values["pay_ref"] = view["id"][:64]
        state = view.get("state")
        if isinstance(state, str) and can_move(self.state, state):
            values["state"] = state
            reason = view.get("reason") or {}
            if isinstance(reason, dict) and reason.get("code"):
                values["reason_code"] = str(reason["code"])[:64]
                values["message"] = str(reason.get("message") or "")[:500]
            details = view.get("details") or {}
            if isinstance(details, dict):
                values.update(self._details_values(details))
        if values:
            self.write(values)

    @staticmethod
    def _details_values(details):
        values = {}
        for key, field in (("authorisation", "authorization"), ("card_masked", "card_masked"), ("brand", "brand")):
            if details.get(key):
                values[field] = str(details[key])[:64]
        if "brand" not in values and details.get("application"):
            values["brand"] = str(details["application"])[:64]
        return values

    def _apply_error(self, code, message):
        """The bridge refused the command that started this payment: nothing was charged."""
        if self.state in ("queued", "accepted"):
            self.write({"state": "failed", "reason_code": code[:64], "message": message[:500]})

    def _apply_feedback(self, params, seq):
        """Apply a verified feedback post (its TBSEQ is ``seq``); an older one than already applied is kept only."""
        if seq and self.last_seq and seq <= self.last_seq:
            return False
        state = params.get("TBSTATE") or STATUS_STATES.get(params.get("STATUS", ""))
        values = {"last_seq": seq or self.last_seq}
        if params.get("PAYID") and not self.pay_ref:
            values["pay_ref"] = params["PAYID"][:64]
        if state and can_move(self.state, state):
            values["state"] = state
            values["reason_code"] = (params.get("TBREASON") or "")[:64] or False
            values["message"] = (params.get("TBMESSAGE") or "")[:500] or False
            for key, field in (("ACCEPTANCE", "authorization"), ("CARDNO", "card_masked"), ("BRAND", "brand")):
                if params.get(key):
                    values[field] = params[key][:64]
        self.write(values)
        return True
