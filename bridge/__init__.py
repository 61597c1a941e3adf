"""terminal-bridge: a LAN daemon between a cloud Odoo and the shop's payment terminals."""

__version__ = "0.1.0"
