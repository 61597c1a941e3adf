import hashlib
import logging
import re
import secrets
from datetime import timedelta

from odoo import fields, models

from .compat import HAS_CONSTRAINT

_logger = logging.getLogger(__name__)

CODE_ALPHABET = "ABCDEFGHJKMNPQRSTVWXYZ23456789"
CODE_LENGTH = 16
CODE_LIFETIME = timedelta(minutes=10)
MAX_WRONG_PER_MINUTE = 10


def normalize(code):
    """The code as typed, dashes, spaces and case dropped."""
    return re.sub(r"[\s-]+", "", code).upper() if isinstance(code, str) else ""


def digest(code):
    return hashlib.sha256(code.encode("utf-8")).hexdigest()


class TerminalBridgePairing(models.Model):
    """One-time pairing codes: only their SHA-256 is kept."""

    _name = "terminal.bridge.pairing"
    _description = "Pairing code of a terminal bridge"
    _order = "id desc"

    bridge_id = fields.Many2one("terminal.bridge", required=True, ondelete="cascade", index=True)
    code_hash = fields.Char(required=True, index=True)
    expires_at = fields.Datetime(required=True)
    used_date = fields.Datetime()

    if HAS_CONSTRAINT:
        _code_hash_unique = models.Constraint("UNIQUE(code_hash)", "A pairing code is unique.")
    else:
        _sql_constraints = [("code_hash_unique", "UNIQUE(code_hash)", "A pairing code is unique.")]

    def _new_code(self, bridge):
        """A new code for ``bridge`` (voiding its previous unused ones); returns (code, expiry)."""
        self.search([("bridge_id", "=", bridge.id), ("used_date", "=", False)]).unlink()
        code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
        expires = fields.Datetime.now() + CODE_LIFETIME
        self.create({"bridge_id": bridge.id, "code_hash": digest(code), "expires_at": expires})
        return code, expires

    def _pair(self, code, box, remote=""):
        """Check ``code`` and pair its bridge. Returns (HTTP status, error code or None, answer or words)."""
        # Every attempt locks the guard row, and every wrong one writes it: concurrent attempts in other workers
        # wait, then conflict (Odoo retries the request on a fresh snapshot), so the count below is exact.
        guard = self.env.ref("terminal_bridge.pairing_guard").sudo()
        self.env.cr.execute("SELECT id FROM ir_config_parameter WHERE id = %s FOR UPDATE", [guard.id])
        Attempt = self.env["terminal.bridge.pairing.attempt"]
        since = fields.Datetime.now() - timedelta(seconds=60)
        if Attempt.search_count([("at", ">=", since)]) >= MAX_WRONG_PER_MINUTE:
            return 429, "too_many_attempts", "Too many wrong pairing codes this minute; wait a minute and try again."
        code = normalize(code)
        found = self.browse()
        if len(code) == CODE_LENGTH and all(c in CODE_ALPHABET for c in code):
            found = self.search([("code_hash", "=", digest(code))], limit=1)
        if not found or not found.bridge_id.active:
            Attempt.create({"at": fields.Datetime.now(), "remote_addr": (remote or "")[:64]})
            guard.value = str(int(guard.value or 0) + 1)
            Attempt._gc()
            return 403, "wrong_code", "Odoo knows no such pairing code."
        if found.used_date:
            return 409, "used_code", "This pairing code was already used; show a new one in Odoo."
        if found.expires_at < fields.Datetime.now():
            return 410, "expired_code", "This pairing code has expired; show a new one in Odoo."
        found.used_date = fields.Datetime.now()
        return 200, None, found.bridge_id._pairing_answer(box)


class TerminalBridgePairingAttempt(models.Model):
    """A wrong pairing code, counted for the limit of MAX_WRONG_PER_MINUTE per database."""

    _name = "terminal.bridge.pairing.attempt"
    _description = "Wrong pairing code"
    _log_access = False

    at = fields.Datetime(required=True, index=True)
    remote_addr = fields.Char()

    def _gc(self):
        self.search([("at", "<", fields.Datetime.now() - timedelta(hours=1))]).unlink()
