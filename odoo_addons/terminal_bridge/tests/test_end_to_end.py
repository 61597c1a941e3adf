"""The real bridge daemon, paired through /terminal_bridge/pair, takes payments started through the Python API."""

from odoo.tests import HttpCase, tagged

from .bridge_process import BridgeBench


@tagged("post_install", "-at_install", "terminal_bridge_e2e")
class TestEndToEnd(HttpCase):
    def test_approved_declined_and_terminal_list(self):
        bench = BridgeBench(self)
        bridge = bench.start({"till-1": "approve", "till-2": "decline"})
        with bench.database():
            self.assertEqual(bridge.sudo().box_name, "test-box")
            bridge.action_refresh_terminals()
        bench.wait_for(lambda: len(bridge.terminal_ids) == 2, what="the terminal list")
        with bench.database():
            self.assertEqual(bridge.terminal_ids.mapped("terminal_type"), ["caisse-ap-tcp", "caisse-ap-tcp"])
            approved = bridge.start_payment("till-1", 1234, "EUR", reference="Order 1")
            declined = bridge.start_payment("till-2", 500, "EUR", reference="Order 2")
        bench.wait_for(lambda: approved.is_final and declined.is_final and approved.feedback_ids
                       and declined.feedback_ids, what="both payments' feedback")
        with bench.database():
            self.assertEqual(approved.state, "approved", approved.to_client_dict())
            self.assertTrue(approved.authorization)
            self.assertTrue(approved.card_masked)
            self.assertTrue(approved.pay_ref.startswith("pay_"))
            self.assertEqual(approved.feedback_ids.order_ref, approved.command_id)
            self.assertEqual(declined.state, "declined", declined.to_client_dict())
            self.assertTrue(declined.message)
            self.assertIn("Paired, last seen", bridge.status_text)

    def test_bridge_stopped_then_started(self):
        bench = BridgeBench(self)
        bridge = bench.start({"till-1": "approve"})
        bench.stop_bridge()
        payment = bridge.start_payment("till-1", 4200, "EUR")
        self.assertEqual(payment.state, "queued")
        bench.start_bridge()
        bench.wait_for(lambda: payment.state == "approved" and payment.feedback_ids, what="the approval")
        with bench.database():  # the daemon runs: its requests must not use the cursor meanwhile (18.0)
            command = payment.command_ids
            self.assertEqual((command.state, len(command)), ("done", 1))
            # Run once: one request reached the terminal, one payment, one feedback.
            self.assertEqual(len(payment.feedback_ids), 1)
        self.assertEqual(len(bench.terminal_requests("till-1")), 1)

    def test_odoo_unreachable_mid_payment(self):
        """Odoo goes away after the bridge took the payment: the result waits on the box and lands once Odoo is
        back (the box retries until HTTP 200); nothing runs twice."""
        bench = BridgeBench(self)
        bridge = bench.start({"till-1": "approve-slow"})
        with bench.database():
            payment = bridge.start_payment("till-1", 999, "EUR")
        bench.wait_for(lambda: payment.state != "queued", what="the bridge taking the payment")
        bench.stop_front()
        bench.wait_for(lambda: bench.uplink_status()[0]["feedback_waiting"] == 1 or payment.feedback_ids,
                       what="the result waiting on the box")
        self.assertFalse(payment.feedback_ids, "the result reached Odoo while it was unreachable")
        self.assertFalse(payment.is_final)
        bench.start_front()
        bench.wait_for(lambda: payment.state == "approved" and payment.feedback_ids, what="the result after Odoo came back")
        with bench.database():
            self.assertEqual(len(payment.feedback_ids), 1)
            self.assertEqual(payment.command_ids.state, "done")
        self.assertEqual(len(bench.terminal_requests("till-1")), 1)
