"""/terminal_bridge/pair: single use, 10 minutes, 10 wrong tries a minute, and what the box receives."""

from datetime import datetime, timedelta

from freezegun import freeze_time

from odoo import fields
from odoo.tests import HttpCase, tagged

from ..tools import signing
from .common import CONTROLLER_LOGGER, as_json

JSON = {"Content-Type": "application/json"}


@tagged("post_install", "-at_install")
class TestPairing(HttpCase):
    def setUp(self):
        super().setUp()
        self.bridge = self.env["terminal.bridge"].create({"name": "Shop Lyon"})
        self.database = self.env.cr.dbname

    def code(self, bridge=None):
        action = (bridge or self.bridge).action_pair()
        return action["context"]["default_code"], action["context"]["default_command"]

    def pair(self, code, **extra):
        body = {"code": code, "database": self.database, "bridge": {"name": "shop-box", "version": "0.4.0",
                                                                      "fingerprint": "AB:CD"}}
        body.update(extra)
        self.env.flush_all()
        response = self.url_open("/terminal_bridge/pair", data=as_json(body), headers=JSON, timeout=30)
        self.env.invalidate_all()
        return response

    def assertPairRefused(self, code, status, error, **extra):
        with self.assertLogs(CONTROLLER_LOGGER, "WARNING") as logs:
            response = self.pair(code, **extra)
        self.assertEqual(response.status_code, status, response.text)
        self.assertEqual(response.json()["error"]["code"], error)
        self.assertTrue(response.json()["error"]["message"])
        self.assertIn(f"HTTP {status}", "\n".join(logs.output))

    def test_wizard_shows_code_and_command(self):
        now = datetime(2026, 5, 1, 8, 0, 0)
        with freeze_time(now):
            action = self.bridge.action_pair()
        code, command = action["context"]["default_code"], action["context"]["default_command"]
        # Valid for 10 minutes from now, as the wizard says.
        self.assertEqual(action["context"]["default_expires"], "2026-05-01 08:10:00")
        self.assertRegex(code, r"^[ABCDEFGHJKMNPQRSTVWXYZ23456789]{4}(-[ABCDEFGHJKMNPQRSTVWXYZ23456789]{4}){3}$")
        base_url = self.env["ir.config_parameter"].get_param("web.base.url")
        self.assertEqual(command, f"sudo terminal-bridge uplink pair {base_url} {code} --database {self.database}")
        # Only the code's SHA-256 is kept.
        stored = self.env["terminal.bridge.pairing"].sudo().search([("bridge_id", "=", self.bridge.id)])
        self.assertEqual(len(stored), 1)
        self.assertEqual(stored.expires_at, datetime(2026, 5, 1, 8, 10, 0))
        self.assertNotIn(code.replace("-", ""), stored.code_hash)

    def test_pair_answers_every_secret_once(self):
        code, _command = self.code()
        response = self.pair(code.lower().replace("-", " "))
        self.assertEqual(response.status_code, 200, response.text)
        answer = response.json()
        client, uplink = answer["client"], answer["uplink"]
        self.assertEqual((answer["bridge"], answer["database"]), ("Shop Lyon", self.database))
        self.assertEqual(client["rights"], ["pay", "read", "refund", "resolve"])
        self.assertTrue(client["id"].startswith("cl_"))
        for secret in (client["secret_in"], client["secret_out"], uplink["feedback_secret"]):
            self.assertRegex(secret, r"^[0-9a-f]{64}$")
        self.assertRegex(uplink["channel_token"], r"^[0-9a-f]{32}$")
        self.assertEqual(uplink["feedback_hash"], "sha512")
        self.assertEqual(client["name"], uplink["name"])
        bridge = self.bridge.sudo()
        self.assertEqual((bridge.state, bridge.client_ref, bridge.secret_out, bridge.box_name),
                         ("paired", client["id"], client["secret_out"], "shop-box"))
        self.assertIn("Paired", bridge.status_text)
        # Used once.
        self.assertPairRefused(code, 409, "used_code")
        # Pairing again rotates every secret but keeps the client's name and id.
        code2, _command = self.code()
        again = self.pair(code2).json()
        self.assertEqual((again["client"]["id"], again["client"]["name"]), (client["id"], client["name"]))
        self.assertNotEqual(again["client"]["secret_out"], client["secret_out"])
        self.assertNotEqual(again["uplink"]["channel_token"], uplink["channel_token"])
        old = signing.signed({"client": client["id"]}, client["secret_out"])
        self.assertFalse(signing.verify(old, bridge.secret_out))

    def test_expired_code(self):
        code, _command = self.code()
        self.env["terminal.bridge.pairing"].sudo().search([("bridge_id", "=", self.bridge.id)]).expires_at = (
            fields.Datetime.now() - timedelta(seconds=1)
        )
        self.assertPairRefused(code, 410, "expired_code")
        self.assertEqual(self.bridge.state, "unpaired")

    def test_new_code_voids_the_previous(self):
        first, _command = self.code()
        second, _command = self.code()
        self.assertPairRefused(first, 403, "wrong_code")
        self.assertEqual(self.pair(second).status_code, 200)

    def test_bad_requests(self):
        code, _command = self.code()
        for body, status, error in ((b"{nope", 400, "bad_request"), (b"[]", 400, "bad_request"),
                                    (b" " * (8 * 1024 + 1), 413, "too_large")):
            with self.assertLogs(CONTROLLER_LOGGER, "WARNING"):
                response = self.url_open("/terminal_bridge/pair", data=body, headers=JSON)
            self.assertEqual((response.status_code, response.json()["error"]["code"]), (status, error))
        self.assertPairRefused("", 400, "bad_request")
        self.assertPairRefused(code, 404, "not_found", database="another")
        self.assertEqual(self.pair(code).status_code, 200)

    def test_ten_wrong_codes_a_minute(self):
        code, _command = self.code()
        for i in range(10):
            self.assertPairRefused("K7QD-M2XP-9RWT-HV4%s" % "ABCDEFGHJK"[i], 403, "wrong_code")
        # The eleventh attempt is refused even with the right code, until the minute is over.
        self.assertPairRefused(code, 429, "too_many_attempts")
        self.assertEqual(self.bridge.state, "unpaired")
        self.env["terminal.bridge.pairing.attempt"].sudo().search([]).write(
            {"at": fields.Datetime.now() - timedelta(seconds=61)}
        )
        self.assertEqual(self.pair(code).status_code, 200)
