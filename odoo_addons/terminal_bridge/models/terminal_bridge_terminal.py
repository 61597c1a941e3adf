from odoo import api, fields, models

from .compat import HAS_CONSTRAINT


class TerminalBridgeTerminal(models.Model):
    """A card terminal of a bridge, as the bridge's terminal.list names it."""

    _name = "terminal.bridge.terminal"
    _description = "Terminal of a terminal bridge"
    _order = "bridge_id, name"

    bridge_id = fields.Many2one("terminal.bridge", required=True, ondelete="cascade", index=True)
    name = fields.Char(required=True, help="The terminal's name in the bridge's configuration, e.g. till-1.")
    terminal_type = fields.Char(string="Type", readonly=True, help="caisse-ap-tcp, caisse-ap-serial, stripe...")
    state = fields.Char(readonly=True, help="What the bridge last said: idle, busy, disconnected...")
    detail = fields.Char(readonly=True)
    active = fields.Boolean(default=True)

    if HAS_CONSTRAINT:
        _bridge_name_unique = models.Constraint(
            "UNIQUE(bridge_id, name)", "A bridge has one terminal of each name."
        )
    else:
        _sql_constraints = [("bridge_name_unique", "UNIQUE(bridge_id, name)", "A bridge has one terminal of each name.")]

    @api.depends("bridge_id.name", "name")
    def _compute_display_name(self):
        for terminal in self:
            terminal.display_name = f"{terminal.bridge_id.name} / {terminal.name}"

    def _update_from_list(self, bridge, terminals):
        """Apply a terminal.list result: known terminals updated, new ones added, missing ones archived."""
        Terminal = self.sudo().with_context(active_test=False)
        seen = set()
        for item in terminals:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                continue
            name = item["name"][:64]
            seen.add(name)
            values = {
                "terminal_type": str(item.get("type") or "")[:64] or False,
                "state": str(item.get("state") or "")[:64] or False,
                "detail": str(item.get("detail") or "")[:250] or False,
                "active": True,
            }
            found = Terminal.search([("bridge_id", "=", bridge.id), ("name", "=", name)], limit=1)
            if found:
                found.write(values)
            else:
                Terminal.create(dict(values, bridge_id=bridge.id, name=name))
        Terminal.search([("bridge_id", "=", bridge.id), ("name", "not in", list(seen))]).write({"active": False})
