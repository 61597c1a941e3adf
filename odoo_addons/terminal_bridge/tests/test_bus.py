"""The bridge's bus channel: its token string is mapped to the bridge record, and a notification reaches it.

Through real WebSockets on Odoo's test server, with a public session as the box's."""

import json

from odoo.addons.bus.models.bus import channel_with_db, dispatch, hashable
from odoo.addons.bus.tests.common import WebsocketCase
from odoo.tests import tagged

from .common import paired_bridge


@tagged("post_install", "-at_install")
class TestBusChannel(WebsocketCase):
    def setUp(self):
        super().setUp()
        self.bridge, answer = paired_bridge(self.env)
        self.channel = "terminal_bridge-" + answer["uplink"]["channel_token"]

    def subscribed_to(self, websocket, channels):
        """Subscribe ``websocket`` to ``channels`` (replacing its subscription); the channels Odoo registered."""
        self.env.flush_all()  # the websocket's requests read the bridge from the database
        self.subscribe(websocket, channels, self.env["bus.bus"]._bus_last_id())
        db = self.registry.db_name
        return {
            "bridge": hashable(channel_with_db(db, self.bridge)) in dispatch._channels_to_ws,
            "strings": [c for c in channels if hashable(channel_with_db(db, c)) in dispatch._channels_to_ws],
        }

    def test_mapping(self):
        websocket = self.websocket_connect()  # a public session, as the box's
        wrong = ["terminal_bridge-" + "0" * 32, "terminal_bridge-", "terminal_bridge-" + self.channel]
        self.assertEqual(self.subscribed_to(websocket, wrong), {"bridge": False, "strings": []})
        self.assertEqual(self.subscribed_to(websocket, [self.channel]), {"bridge": True, "strings": []})
        self.bridge.active = False
        self.assertEqual(self.subscribed_to(websocket, [self.channel]), {"bridge": False, "strings": []})
        self.bridge.active = True
        # Pairing again rotates the token: the old channel no longer reaches the bridge.
        answer = self.bridge._pairing_answer({})
        self.assertEqual(self.subscribed_to(websocket, [self.channel]), {"bridge": False, "strings": []})
        new = "terminal_bridge-" + answer["uplink"]["channel_token"]
        self.assertEqual(self.subscribed_to(websocket, [new]), {"bridge": True, "strings": []})

    def test_notification_reaches_the_subscribed_bridge(self):
        websocket = self.websocket_connect()
        self.subscribed_to(websocket, [self.channel])
        self.bridge.start_payment("till-1", 100, "EUR", command_id="odoo-ws-1")
        self.trigger_notification_dispatching([self.bridge])
        notifications = json.loads(websocket.recv())
        self.assertEqual(
            [n["message"] for n in notifications],
            [{"type": "terminal_bridge/command", "payload": {"command_id": "odoo-ws-1"}}],
        )
