"""The sizes the bridge reads: a command at most 64 KiB when queued, a /pending answer at most 1 MiB in all."""

import json
import logging

from odoo.exceptions import UserError
from odoo.tests import HttpCase, tagged

from ..models.terminal_bridge import MAX_COMMAND_BYTES
from ..models.terminal_bridge_command import MAX_PENDING_BYTES
from .common import BridgeSide, as_json, paired_bridge

JSON = {"Content-Type": "application/json"}
MODEL_LOGGER = "odoo.addons.terminal_bridge.models.terminal_bridge_command"


def compact_size(message):
    """The size the bridge checks against its max_message_bytes (bridge/uplink/commands.py)."""
    return len(json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


@tagged("post_install", "-at_install")
class TestCommandSize(HttpCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.bridge, answer = paired_bridge(cls.env)
        cls.side = BridgeSide(answer, cls.env.cr.dbname)
        cls.env.flush_all()

    def pending(self):
        self.env.flush_all()
        response = self.url_open(
            "/terminal_bridge/pending", data=as_json(self.side.signed(self.side.request())), headers=JSON, timeout=60
        )
        self.env.invalidate_all()
        self.assertEqual(response.status_code, 200, response.text)
        return response

    def cursor_for(self, size, command_id):
        """A payment.list cursor that makes the signed command ``command_id`` exactly ``size`` bytes (mostly
        non-ASCII, 2 bytes each: bytes are counted, not characters)."""
        base = self.bridge._command_size("payment.list", {"cursor": ""}, command_id)
        padding = size - base
        return "é" * (padding // 2) + "x" * (padding % 2)

    # -- when queued -----------------------------------------------------------------------------

    def test_queue_refuses_a_command_larger_than_the_bridge_reads(self):
        Command = self.env["terminal.bridge.command"]
        fits = self.bridge._queue_command(
            "payment.list", {"cursor": self.cursor_for(MAX_COMMAND_BYTES, "odoo-size-fits")}, command_id="odoo-size-fits"
        )
        with self.assertRaises(UserError) as raised:
            self.bridge._queue_command(
                "payment.list", {"cursor": self.cursor_for(MAX_COMMAND_BYTES + 1, "odoo-size-over")},
                command_id="odoo-size-over",
            )
        self.assertIn("too large", str(raised.exception))
        self.assertIn(str(MAX_COMMAND_BYTES), str(raised.exception))
        self.assertEqual(Command.search([("bridge_id", "=", self.bridge.id)]), fits, "nothing else was queued")
        # The estimate is what the bridge measures of the command as served.
        served = Command._serve(self.bridge)
        self.assertEqual([compact_size(m) for m in served], [MAX_COMMAND_BYTES])

    def test_queue_counts_the_payment_a_command_names_when_served(self):
        """A payment.resolve is served with its payment's id added: the size checked when queued covers it."""
        payment = self.bridge.start_payment("till-1", 99, "EUR", command_id="odoo-size-resolve")
        payment.command_ids.write({"state": "done"})
        payment._apply_view({"id": "p" * 64, "state": "unknown"})
        payment.resolve("failed", "receipt shows nothing")
        command = payment.command_ids.filtered(lambda c: c.op == "payment.resolve")
        estimate = self.bridge._command_size(command.op, command._args(), command.uuid)
        served = self.env["terminal.bridge.command"]._serve(self.bridge)
        self.assertEqual([m["args"].get("payment_id") for m in served], ["p" * 64])
        self.assertLessEqual(compact_size(served[0]), estimate)

    # -- when served -----------------------------------------------------------------------------

    def test_pending_answer_stays_within_1_mib(self):
        queued = self.env["terminal.bridge.command"]
        for i in range(20):
            queued |= self.bridge._queue_command(
                "payment.list", {"cursor": self.cursor_for(60 * 1024, f"odoo-size-{i:02d}")}, command_id=f"odoo-size-{i:02d}"
            )
        response = self.pending()
        served = [c["id"] for c in response.json()["commands"]]
        self.assertLessEqual(len(response.content), MAX_PENDING_BYTES)
        self.assertTrue(0 < len(served) < 20, len(served))
        self.assertEqual(served, queued[: len(served)].mapped("uuid"), "the oldest first, none skipped")
        # The next one would not have fitted.
        self.assertGreater(len(response.content) + 2 + 60 * 1024, MAX_PENDING_BYTES)
        # Once acknowledged, the rest comes.
        for command_id in served:
            self.url_open("/terminal_bridge/ack", data=as_json(self.side.ack(command_id, {})), headers=JSON)
        rest = [c["id"] for c in self.pending().json()["commands"]]
        self.assertEqual(rest, queued[len(served) :].mapped("uuid"))

    def test_an_oversized_command_served_before_is_never_said_refused(self):
        """The bridge may have run a command it was served: it is passed over, never closed as refused, and its
        payment is not failed."""
        payment = self.bridge.start_payment("till-1", 1234, "EUR", command_id="odoo-size-served")
        payment.command_ids.write({"args": json.dumps({"terminal": "x" * MAX_PENDING_BYTES}), "served_count": 1})
        self.bridge.action_refresh_terminals()
        with self.assertLogs(MODEL_LOGGER, logging.ERROR) as logs:
            response = self.pending()
        self.assertIn("odoo-size-served", "\n".join(logs.output))
        self.assertEqual([c["op"] for c in response.json()["commands"]], ["terminal.list"])
        self.assertEqual(payment.command_ids.state, "queued")
        self.assertEqual(payment.state, "queued")

    def test_pending_closes_a_command_no_answer_can_carry(self):
        """A command larger than any answer (queued before Odoo checked sizes) fails with a reason and no longer
        holds back the ones after it."""
        payment = self.bridge.start_payment("till-1", 1234, "EUR", command_id="odoo-size-huge")
        payment.command_ids.write({"args": json.dumps({"terminal": "x" * MAX_PENDING_BYTES})})
        self.bridge.action_refresh_terminals()
        with self.assertLogs(MODEL_LOGGER, logging.WARNING) as logs:
            response = self.pending()
        self.assertIn("odoo-size-huge", "\n".join(logs.output))
        self.assertEqual([c["op"] for c in response.json()["commands"]], ["terminal.list"])
        command = payment.command_ids
        self.assertEqual((command.state, command.ok, command.error_code), ("done", False, "message_too_large"))
        self.assertEqual((payment.state, payment.reason_code), ("failed", "message_too_large"))
        self.assertIn("too large", payment.message)
        self.assertTrue(payment.is_final)
