"""The bridge's bus channel: its token string is mapped to the bridge record, and a notification reaches it."""

import json
from unittest.mock import MagicMock, patch

from odoo.addons.bus.tests.common import WebsocketCase
from odoo.tests import tagged

from .common import paired_bridge


@tagged("post_install", "-at_install")
class TestBusChannel(WebsocketCase):
    def setUp(self):
        super().setUp()
        self.bridge, answer = paired_bridge(self.env)
        self.channel = "terminal_bridge-" + answer["uplink"]["channel_token"]

    def channels_of(self, strings):
        public = MagicMock()
        public.session.uid = None  # the bridge's session is public, as on a shop's box
        with patch("odoo.addons.bus.models.ir_websocket.wsrequest", new=public):
            return self.env["ir.websocket"].with_user(self.env.ref("base.public_user"))._build_bus_channel_list(
                list(strings)
            )

    def test_mapping(self):
        channels = self.channels_of([self.channel, "terminal_bridge-" + "0" * 32, "terminal_bridge-", "other"])
        self.assertIn(self.bridge, channels)
        self.assertIn("other", channels)
        self.assertFalse([c for c in channels if isinstance(c, str) and c.startswith("terminal_bridge-")])
        self.bridge.active = False
        self.assertNotIn(self.bridge, self.channels_of([self.channel]))
        self.bridge.active = True
        # Pairing again rotates the token: the old channel no longer reaches the bridge.
        self.bridge._pairing_answer({})
        self.assertNotIn(self.bridge, self.channels_of([self.channel]))

    def test_notification_reaches_the_subscribed_bridge(self):
        self.env.flush_all()  # the websocket's own requests read the paired bridge from the database
        websocket = self.websocket_connect()  # a public session, as the bridge's
        self.subscribe(websocket, [self.channel], self.env["bus.bus"]._bus_last_id())
        self.bridge.start_payment("till-1", 100, "EUR", command_id="odoo-ws-1")
        self.trigger_notification_dispatching([self.bridge])
        notifications = json.loads(websocket.recv())
        self.assertEqual(
            [n["message"] for n in notifications],
            [{"type": "terminal_bridge/command", "payload": {"command_id": "odoo-ws-1"}}],
        )
