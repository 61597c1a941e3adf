"""The bridge record as an administrator sees it: its state in words, and secrets that are never shown again."""

from datetime import datetime, timedelta

from freezegun import freeze_time

from odoo.exceptions import AccessError
from odoo.tests import HttpCase, new_test_user, tagged

from .common import paired_bridge

SECRETS = ("secret_in", "secret_out", "channel_token", "feedback_secret")


@tagged("post_install", "-at_install")
class TestBridgeRecord(HttpCase):
    def test_status_in_words(self):
        bridge = self.env["terminal.bridge"].create({"name": "Shop Nantes"})
        self.assertEqual(bridge.status_text, "Not paired yet")
        bridge, _answer = paired_bridge(self.env)
        self.assertEqual(bridge.status_text, "Paired, not seen yet")
        now = datetime(2026, 5, 1, 8, 0, 0)
        with freeze_time(now):
            for ago, words in ((timedelta(seconds=42), "42 s ago"), (timedelta(minutes=5), "5 min ago"),
                               (timedelta(hours=3), "3 h ago"), (timedelta(days=4), "4 days ago")):
                bridge.last_seen = now - ago
                self.assertEqual(bridge.status_text, f"Paired, last seen {words}")
            # The last problem Odoo refused, shown after the state until the bridge's next good request.
            bridge.last_problem = "the box's clock is 300 s behind Odoo's"
            self.assertEqual(bridge.status_text, "Paired, last seen 4 days ago: the box's clock is 300 s behind Odoo's")

    def test_secrets_are_never_shown_nor_exported(self):
        bridge, answer = paired_bridge(self.env)
        self.assertEqual(bridge.sudo().secret_out, answer["client"]["secret_out"])
        # Not in any view of the bridge, and not offered by the export dialog, even to a system administrator.
        views = self.env["terminal.bridge"].get_views([(False, "form"), (False, "list")])["views"]
        for secret in SECRETS:
            for kind in ("form", "list"):
                self.assertNotIn(secret, views[kind]["arch"])
        described = self.env["terminal.bridge"].fields_get(list(SECRETS), ["exportable"])
        self.assertEqual({name: d["exportable"] for name, d in described.items()}, dict.fromkeys(SECRETS, False))
        self.authenticate("admin", "admin")
        for import_compat in (False, True):
            exportable = self.make_jsonrpc_request(
                "/web/export/get_fields", {"model": "terminal.bridge", "domain": [], "import_compat": import_compat}
            )
            names = {field["id"] for field in exportable}
            self.assertIn("name", names)
            self.assertFalse(names & set(SECRETS), "the export dialog offers a secret")
        # Readable only by system administrators: not by a terminal bridge manager who is not one.
        manager = new_test_user(
            self.env, login="tb-manager", groups="base.group_user,terminal_bridge.group_terminal_bridge_manager"
        )
        for secret in SECRETS:
            with self.subTest(secret=secret), self.assertRaises(AccessError):
                bridge.with_user(manager).read([secret])
