import hmac

from odoo import models

from .terminal_bridge import CHANNEL_PREFIX


class IrWebsocket(models.AbstractModel):
    _inherit = "ir.websocket"

    def _build_bus_channel_list(self, channels):
        """Replace each ``terminal_bridge-<token>`` string by the active paired bridge holding that token."""
        kept = []
        wanted = []
        for channel in channels:
            if isinstance(channel, str) and channel.startswith(CHANNEL_PREFIX):
                wanted.append(channel[len(CHANNEL_PREFIX) :])
            else:
                kept.append(channel)
        if wanted:
            bridges = self.env["terminal.bridge"].sudo().search([("state", "=", "paired"), ("channel_token", "!=", False)])
            for token in wanted:
                raw = token.encode("utf-8", "replace")
                for bridge in bridges:
                    if hmac.compare_digest(raw, bridge.channel_token.encode("utf-8")):
                        kept.append(bridge)
                        break
        return super()._build_bus_channel_list(kept)
