from datetime import timedelta

from odoo import api, fields, models

from .compat import HAS_CONSTRAINT

#: A nonce is remembered this long: twice the clock skew a request may have (docs/cloud-protocol.md).
NONCE_WINDOW = 240


class TerminalBridgeNonce(models.Model):
    """Nonces of the bridges' signed requests seen in the last NONCE_WINDOW seconds, shared by every worker."""

    _name = "terminal.bridge.nonce"
    _description = "Nonce of a terminal bridge request"
    _log_access = False

    bridge_id = fields.Many2one("terminal.bridge", required=True, ondelete="cascade")
    nonce = fields.Char(required=True)
    seen_at = fields.Datetime(required=True, index=True)

    if HAS_CONSTRAINT:
        _bridge_nonce_unique = models.Constraint("UNIQUE(bridge_id, nonce)", "A nonce is used once.")
    else:
        _sql_constraints = [("bridge_nonce_unique", "UNIQUE(bridge_id, nonce)", "A nonce is used once.")]

    def _use(self, bridge, nonce):
        """Record ``nonce`` for ``bridge``; False if it was seen before (a replay).

        Nonces older than the window are deleted by Odoo's daily autovacuum (:meth:`_gc_old_nonces`), not here:
        two requests deleting the same expired rows at once make PostgreSQL refuse the second (Odoo's repeatable
        read), and Odoo retries it after a random pause of up to 2 s. Keeping a nonce longer changes nothing for
        the bridge: its nonces are random, and a request older than the clock skew is refused by its ts."""
        cr = self.env.cr
        now = fields.Datetime.now()  # the clock's time, not the transaction's start (SQL now())
        cr.execute(
            """INSERT INTO terminal_bridge_nonce (bridge_id, nonce, seen_at)
               VALUES (%s, %s, %s)
               ON CONFLICT (bridge_id, nonce) DO NOTHING RETURNING id""",
            [bridge.id, nonce, now],
        )
        return bool(cr.fetchone())

    @api.autovacuum
    def _gc_old_nonces(self):
        """Forget the nonces seen more than NONCE_WINDOW seconds ago (run daily by Odoo's autovacuum)."""
        cutoff = fields.Datetime.now() - timedelta(seconds=NONCE_WINDOW)
        self.env.cr.execute("DELETE FROM terminal_bridge_nonce WHERE seen_at < %s", [cutoff])
