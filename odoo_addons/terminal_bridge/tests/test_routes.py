"""Every check of /pending, /ack and /feedback, through real HTTP requests to Odoo's test server."""

import json
import time
from datetime import timedelta
from unittest.mock import patch

from psycopg2 import errors

from odoo import fields
from odoo.tests import HttpCase, tagged

from ..tools import signing
from .common import CONTROLLER_LOGGER, BridgeSide, as_form, as_json, paired_bridge

JSON = (("Content-Type", "application/json"),)
FORM = (("Content-Type", "application/x-www-form-urlencoded"),)


@tagged("post_install", "-at_install")
class TestRoutes(HttpCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.bridge, answer = paired_bridge(cls.env)
        cls.side = BridgeSide(answer, cls.env.cr.dbname)
        cls.eur = cls.env.ref("base.EUR")
        cls.env.flush_all()

    def post(self, path, body, headers=JSON):
        self.env.flush_all()
        response = self.url_open(path, data=body, headers=dict(headers), timeout=30)
        self.env.invalidate_all()
        return response

    def pending(self, message):
        return self.post("/terminal_bridge/pending", as_json(message))

    def assertRefused(self, path, body, status, reason, headers=JSON):
        with self.assertLogs(CONTROLLER_LOGGER, "WARNING") as logs:
            response = self.post(path, body, headers)
        self.assertEqual(response.status_code, status, response.text)
        self.assertIn(reason, "\n".join(logs.output))
        return response

    # -- /pending ------------------------------------------------------------------------------------

    def test_pending_serves_queued_commands_signed_now(self):
        payment = self.bridge.start_payment("till-1", 1234, self.eur, command_id="odoo-pending-1")
        self.bridge.action_refresh_terminals()
        response = self.pending(self.side.signed(self.side.request()))
        self.assertEqual(response.status_code, 200, response.text)
        commands = response.json()["commands"]
        self.assertEqual([c["op"] for c in commands], ["payment.start", "terminal.list"])
        start = commands[0]
        self.assertEqual(start["id"], payment.command_id)
        self.assertEqual(start["args"], {"terminal": "till-1", "amount": 1234, "currency": "EUR"})
        self.assertLessEqual(abs(start["ts"] - time.time()), 5)
        self.assertTrue(signing.verify(start, self.side.client["secret_in"], self.side.client["algorithm"]))
        self.assertFalse(signing.verify(start, self.side.client["secret_out"]))
        self.assertTrue(self.bridge.last_seen)
        self.assertEqual(payment.command_ids.served_count, 1)

    def test_pending_retried_after_a_serialization_failure_reads_its_body_again(self):
        """Odoo runs a request again when its transaction collides with another one (a bridge's /feedback and
        /pending both touch its row): the second run must still read the body."""

        class Collision(errors.SerializationFailure):
            pgcode = "40001"  # what PostgreSQL sets on a real one

        Bridge = type(self.env["terminal.bridge"])
        original, calls = Bridge._seen, []

        def seen_once_too_late(records):
            calls.append(1)
            if len(calls) == 1:
                raise Collision("could not serialize access due to concurrent update")
            return original(records)

        self.bridge.action_refresh_terminals()
        with patch.object(Bridge, "_seen", seen_once_too_late):
            response = self.pending(self.side.signed(self.side.request()))
        self.assertEqual(response.status_code, 200, response.text)
        self.assertEqual(len(calls), 2)
        self.assertEqual([c["op"] for c in response.json()["commands"]], ["terminal.list"])

    def test_last_seen_is_written_at_most_every_few_seconds(self):
        self.bridge._seen()
        first = self.bridge.last_seen
        self.bridge.write({"last_seen": first - timedelta(seconds=3)})
        self.bridge._seen()
        self.assertEqual(self.bridge.last_seen, first - timedelta(seconds=3), "written again within 10 s")
        self.bridge.write({"last_problem": "the box's clock is off"})
        self.bridge._seen()
        self.assertFalse(self.bridge.last_problem, "a problem is cleared at once")
        self.bridge.write({"last_seen": first - timedelta(seconds=11)})
        self.bridge._seen()
        self.assertGreaterEqual(self.bridge.last_seen, first)

    def test_pending_at_most_50_oldest_first(self):
        for _i in range(52):
            self.bridge.action_refresh_terminals()
        commands = self.pending(self.side.signed(self.side.request())).json()["commands"]
        queued = self.env["terminal.bridge.command"].search([("bridge_id", "=", self.bridge.id)], order="id")
        self.assertEqual([c["id"] for c in commands], queued[:50].mapped("uuid"))

    def test_pending_refusals(self):
        side = self.side
        path = "/terminal_bridge/pending"
        self.assertRefused(path, as_json(side.signed(side.request(client="cl_nobody"))), 403, "no paired bridge")
        self.assertRefused(path, as_json(side.signed(side.request(database="other"))), 403, "names the database")
        self.assertRefused(path, as_json(side.signed(side.request(), secret="0" * 64)), 403, "wrong signature")
        self.assertIn("wrong signature", self.bridge.last_problem)  # what the administrator reads on the record
        self.assertRefused(path, as_json(dict(side.request(), sig="")), 403, "wrong signature")
        self.assertRefused(path, as_json(side.request()), 403, "wrong signature")
        self.assertRefused(path, as_json(side.signed(side.request(ts=int(time.time()) - 121))), 403, "behind")
        self.assertRefused(path, as_json(side.signed(side.request(ts=int(time.time()) + 121))), 403, "ahead of")
        self.assertRefused(path, as_json(side.signed(side.request(ts=str(int(time.time()))))), 403, "no integer ts")
        self.assertRefused(path, as_json(side.signed(side.request(ts=True))), 403, "no integer ts")
        self.assertRefused(path, as_json(side.signed(side.request(nonce="short"))), 403, "nonce is missing")
        self.assertRefused(path, as_json(side.signed(side.request(nonce=None))), 403, "nonce is missing")
        self.assertRefused(path, b"{not json", 400, "not JSON")
        self.assertRefused(path, b"[1, 2]", 400, "not a JSON object")
        self.assertRefused(path, b" " * (9 * 1024), 413, "larger than")
        self.assertIn("clock", self.bridge.last_problem)
        # A GET is not a route of this addon.
        self.assertEqual(self.url_open(path).status_code, 405)

    def test_pending_replayed_nonce(self):
        message = self.side.signed(self.side.request())
        self.assertEqual(self.pending(message).status_code, 200)
        self.assertRefused("/terminal_bridge/pending", as_json(message), 403, "already used")
        # The window is kept in the database (every worker agrees). A request deletes no other nonce (two requests
        # deleting the same expired rows at once would make Odoo retry one after up to 2 s): the daily
        # autovacuum forgets those older than 240 s.
        Nonce = self.env["terminal.bridge.nonce"].sudo()
        row = Nonce.search([("nonce", "=", message["nonce"])])
        self.assertEqual(len(row), 1)
        row.seen_at = fields.Datetime.now() - timedelta(seconds=241)
        old = self.side.signed(self.side.request())
        Nonce.create({"bridge_id": self.bridge.id, "nonce": old["nonce"], "seen_at": fields.Datetime.now() - timedelta(seconds=300)})
        fresh = self.side.signed(self.side.request())
        self.assertEqual(self.pending(fresh).status_code, 200)
        self.assertEqual(len(Nonce.search([("nonce", "in", [message["nonce"], old["nonce"]])])), 2)
        self.assertRefused("/terminal_bridge/pending", as_json(message), 403, "already used")
        Nonce._gc_old_nonces()
        self.assertFalse(Nonce.search([("nonce", "in", [message["nonce"], old["nonce"]])]))
        self.assertEqual(len(Nonce.search([("nonce", "=", fresh["nonce"])])), 1)

    def test_unpaired_or_archived_bridge_refused(self):
        message = self.side.signed(self.side.request())
        self.bridge.active = False
        self.assertRefused("/terminal_bridge/pending", as_json(message), 403, "no paired bridge")

    # -- /ack ----------------------------------------------------------------------------------------

    def test_ack_applies_and_closes(self):
        payment = self.bridge.start_payment("till-1", 1234, "EUR", command_id="odoo-ack-1")
        result = {"id": "pay_1", "command_id": "odoo-ack-1", "state": "accepted", "amount": 1234, "currency": "EUR"}
        response = self.post("/terminal_bridge/ack", as_json(self.side.ack("odoo-ack-1", result)))
        self.assertEqual(response.status_code, 200, response.text)
        self.assertEqual((payment.state, payment.pay_ref), ("accepted", "pay_1"))
        command = payment.command_ids
        self.assertEqual((command.state, command.ok), ("done", True))
        self.assertEqual(self.pending(self.side.signed(self.side.request())).json()["commands"], [])
        # The same acknowledgement again (its 200 was lost) changes nothing.
        self.assertEqual(self.post("/terminal_bridge/ack", as_json(self.side.ack("odoo-ack-1", result))).status_code, 200)
        self.assertEqual(payment.state, "accepted")

    def test_ack_error_fails_the_payment(self):
        payment = self.bridge.start_payment("till-9", 1234, "EUR", command_id="odoo-ack-2")
        error = {"code": "unknown_terminal", "message": "There is no terminal till-9."}
        with self.assertLogs(CONTROLLER_LOGGER, "WARNING"):
            self.post("/terminal_bridge/ack", as_json(self.side.ack("odoo-ack-2", error=error)))
        self.assertEqual((payment.state, payment.reason_code, payment.message),
                         ("failed", "unknown_terminal", "There is no terminal till-9."))
        self.assertTrue(payment.is_final)

    def test_a_resolve_the_bridge_refuses_opens_the_question_again(self):
        payment = self.bridge.start_payment("till-1", 99, "EUR", command_id="odoo-ack-3")
        payment._apply_view({"id": "pay_3", "state": "unknown"})
        payment.resolve("failed", "receipt shows nothing")
        self.assertTrue(payment.to_client_dict()["resolution_pending"])
        command = payment.command_ids.filtered(lambda c: c.op == "payment.resolve")
        error = {"code": "forbidden", "message": "This client may not resolve payments."}
        with self.assertLogs(CONTROLLER_LOGGER, "WARNING"):
            self.post("/terminal_bridge/ack", as_json(self.side.ack(command.uuid, error=error)))
        self.assertEqual(payment.state, "unknown")
        self.assertFalse(payment.to_client_dict()["resolution_pending"])
        self.assertFalse(payment.resolved_by)

    def test_ack_terminal_list_fills_terminals(self):
        self.bridge.action_refresh_terminals()
        command = self.bridge.command_ids.filtered(lambda c: c.op == "terminal.list")
        terminals = [{"name": "till-1", "type": "caisse-ap-tcp", "state": "idle"},
                     {"name": "till-2", "type": "stripe", "state": "disconnected"}]
        self.post("/terminal_bridge/ack", as_json(self.side.ack(command.uuid, {"terminals": terminals})))
        self.assertEqual(self.bridge.terminal_ids.mapped("name"), ["till-1", "till-2"])
        self.assertEqual(self.bridge.terminal_ids.mapped("terminal_type"), ["caisse-ap-tcp", "stripe"])
        self.assertEqual(self.bridge.terminal_ids[0].display_name, "Shop Lyon / till-1")

    def test_ack_unknown_command_is_200_and_logged(self):
        with self.assertLogs(CONTROLLER_LOGGER, "WARNING") as logs:
            response = self.post("/terminal_bridge/ack", as_json(self.side.ack("odoo-never-queued", {})))
            self.assertEqual(response.status_code, 200, response.text)
            self.assertEqual(response.json(), {"ok": True, "known": False})
        self.assertIn("does not know", "\n".join(logs.output))

    def test_ack_authentication_refusals(self):
        """/ack makes every check of /pending before it reads the reply."""
        self.bridge.action_refresh_terminals()
        uuid = self.bridge.command_ids.uuid
        side = self.side
        path = "/terminal_bridge/ack"

        def ack(**extra):
            return as_json(side.signed(side.request(command_id=uuid, reply=side.reply(uuid, {}), **extra)))

        self.assertRefused(path, ack(client="cl_nobody"), 403, "no paired bridge")
        self.assertRefused(path, ack(ts=int(time.time()) - 121), 403, "behind")
        self.assertRefused(path, ack(ts=int(time.time()) + 121), 403, "ahead of")
        self.assertRefused(path, ack(ts=None), 403, "no integer ts")
        self.assertRefused(path, ack(nonce="short"), 403, "nonce is missing")
        self.assertRefused(path, b"{not json", 400, "not JSON")
        self.assertRefused(path, b"[1, 2]", 400, "not a JSON object")
        self.assertRefused(path, b" " * (1024 * 1024 + 1), 413, "larger than")
        replayed = ack()
        self.assertEqual(self.post(path, replayed).status_code, 200)
        self.assertRefused(path, replayed, 403, "already used")
        self.assertEqual(self.bridge.command_ids.state, "done")

    def test_ack_refusals(self):
        self.bridge.action_refresh_terminals()
        uuid = self.bridge.command_ids.uuid
        side = self.side
        path = "/terminal_bridge/ack"
        bad_reply = dict(side.reply(uuid, {}), ok=False)
        self.assertRefused(path, as_json(side.signed(side.request(command_id=uuid, reply=bad_reply))), 403, "wrong signature on the reply")
        other = side.reply("odoo-other", {})
        self.assertRefused(path, as_json(side.signed(side.request(command_id=uuid, reply=other))), 400, "another command")
        self.assertRefused(path, as_json(side.signed(side.request(command_id=uuid))), 400, "no reply")
        self.assertRefused(path, as_json(side.signed(side.request(command_id="x" * 129, reply={}))), 400, "no command_id")
        self.assertRefused(path, as_json(dict(side.ack(uuid, {}), command_id="odoo-changed")), 403, "wrong signature")
        self.assertRefused(path, as_json(side.signed(side.request(database="x", command_id=uuid, reply=side.reply(uuid)))), 403, "database")
        self.assertEqual(self.bridge.command_ids.state, "queued")

    # -- /feedback -----------------------------------------------------------------------------------

    def feedback(self, params):
        return self.post("/terminal_bridge/feedback", as_form(params), FORM)

    def accepted_payment(self, command_id):
        payment = self.bridge.start_payment("till-1", 1234, "EUR", command_id=command_id)
        self.post("/terminal_bridge/ack", as_json(self.side.ack(command_id, {"id": "pay_" + command_id, "state": "accepted"})))
        return payment

    def test_feedback_applies_once(self):
        payment = self.accepted_payment("odoo-fb-1")
        params = self.side.feedback("odoo-fb-1", "pay_odoo-fb-1", 7, CARDNO="497010XXXXXX1234", BRAND="CB",
                                    ACCEPTANCE="123456", TBMESSAGE="Paiement accept\u00e9")
        changed = []
        original = type(payment)._tb_state_changed

        def spy(records):
            changed.append(records.ids)
            return original(records)

        type(payment)._tb_state_changed = spy
        self.addCleanup(setattr, type(payment), "_tb_state_changed", original)
        for _i in range(2):  # the second is the same post again (a lost 200)
            response = self.feedback(params)
            self.assertEqual(response.status_code, 200, response.text)
        self.assertEqual((payment.state, payment.authorization, payment.card_masked, payment.brand),
                         ("approved", "123456", "497010XXXXXX1234", "CB"))
        self.assertEqual(payment.message, "Paiement accept\u00e9")
        self.assertEqual(payment.last_seq, 7)
        self.assertEqual(len(payment.feedback_ids), 1)
        self.assertEqual(changed, [payment.ids])

    def test_feedback_without_tbclient_found_by_orderid(self):
        payment = self.accepted_payment("odoo-fb-2")
        response = self.feedback(self.side.feedback("odoo-fb-2", "pay_odoo-fb-2", 3, state="declined", client=False,
                                                    TBREASON="card_declined", TBMESSAGE="The card was declined."))
        self.assertEqual(response.status_code, 200, response.text)
        self.assertEqual((payment.state, payment.reason_code), ("declined", "card_declined"))

    def test_feedback_unknown_orderid_stored(self):
        for client in (True, False):
            with self.subTest(client=client):
                params = self.side.feedback(f"lan-{client}", f"pay_lan_{client}", 1, client=client)
                self.assertEqual(self.feedback(params).status_code, 200)
                stored = self.env["terminal.bridge.feedback"].search([("pay_ref", "=", f"pay_lan_{client}")])
                self.assertEqual((stored.bridge_id, stored.payment_id.id, stored.applied), (self.bridge, False, False))
                self.assertEqual(json.loads(stored.params)["ORDERID"], f"lan-{client}")

    def test_feedback_older_seq_not_applied(self):
        payment = self.accepted_payment("odoo-fb-3")
        self.feedback(self.side.feedback("odoo-fb-3", "pay_odoo-fb-3", 9, state="unknown"))
        self.feedback(self.side.feedback("odoo-fb-3", "pay_odoo-fb-3", 11, state="approved"))
        self.feedback(self.side.feedback("odoo-fb-3", "pay_odoo-fb-3", 10, state="declined"))
        self.assertEqual((payment.state, payment.last_seq), ("approved", 11))
        self.assertEqual(len(payment.feedback_ids), 3)

    def test_feedback_refusals(self):
        payment = self.accepted_payment("odoo-fb-4")
        path = "/terminal_bridge/feedback"
        good = self.side.feedback("odoo-fb-4", "pay_odoo-fb-4", 5)
        side = self.side

        def refused(params, status, reason, body=None):
            self.assertRefused(path, body or as_form(params), status, reason, FORM)

        refused(dict(good, STATUS="2"), 403, "wrong SHASIGN")
        refused({k: v for k, v in good.items() if k != "SHASIGN"}, 403, "not signed")
        refused(side.feedback("odoo-fb-4", "pay_odoo-fb-4", 5, passphrase="x" * 32), 403, "wrong SHASIGN")
        refused(side.feedback("odoo-fb-4", "pay_odoo-fb-4", 5, client=False, passphrase="x" * 32), 403, "wrong SHASIGN")
        refused(side.feedback("lan-1", "pay_lan", 5, client=False, passphrase="x" * 32), 403, "wrong SHASIGN")
        refused(dict(good, TBCLIENT="cl_nobody"), 403, "no paired bridge")
        refused(side.feedback("odoo-fb-4", "pay_odoo-fb-4", "x1"), 400, "not a number")
        refused(side.feedback("odoo-fb-4", "", 5), 400, "no PAYID")
        refused(dict(good, PAD="x" * 17000), 413, "larger than")
        self.assertRefused(path, as_json(good), 415, "not form-encoded")
        self.assertEqual(payment.state, "accepted")
        self.assertFalse(payment.feedback_ids)
        # What the administrator reads on the record (the bridge named by TBCLIENT).
        self.assertIn("wrong SHASIGN", self.bridge.last_problem)

    def test_feedback_when_no_bridge_is_paired(self):
        params = self.side.feedback("lan-2", "pay_lan_2", 1, client=False)
        self.bridge.state = "unpaired"
        self.assertRefused("/terminal_bridge/feedback", as_form(params), 403, "no paired bridge matches", FORM)
        self.assertFalse(self.env["terminal.bridge.feedback"].search([("pay_ref", "=", "pay_lan_2")]))
