"""The cloud path over real sockets and real TLS (a private CA): fake Odoo -> bus wake-up -> HTTPS fetch ->
bridge core -> Caisse-AP simulator -> signed feedback at the fake Odoo."""

import os

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from bridge.api.signing import new_secret
from bridge.service.daemon import Daemon
from bridge.terminals.caisse_ap.simulator import SimulatorScript
from bridge.uplink import bus as bus_module
from bridge.uplink import feedback as feedback_module
from bridge.uplink.service import read_status, status_path
from tests.fake_odoo import FakeOdoo, make_private_ca
from tests.support import add_test_client, credentials_of, load_config, start_simulator, write_config

PAYMENT = {"terminal": "till-1", "amount": 1234, "currency": "EUR"}
CHANNEL_TOKEN = "a1b2c3d4e5f6a7b8c9d0e1f2"
FEEDBACK_SECRET = "Feedback-Passphrase-0123456789"


def sleep(seconds):
    return deferLater(reactor, seconds, lambda: None)


@inlineCallbacks
def wait_for(condition, timeout=15.0, step=0.02):
    for _ in range(int(timeout / step)):
        if condition():
            return
        yield sleep(step)
    raise AssertionError(f"condition not met within {timeout} s")


class UplinkEndToEnd(TestCase):
    timeout = 60
    fetch_interval = 30
    simulator_script = SimulatorScript()

    @inlineCallbacks
    def setUp(self):
        self.patch(feedback_module, "RETRY_INITIAL", 0.05)
        self.patch(feedback_module, "RETRY_MAX", 0.2)
        self.patch(bus_module, "STABLE_AFTER", 0.0)
        self.simulator, terminal = yield start_simulator(self, reactor, self.simulator_script)
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.tls = make_private_ca(self.dir, "odoo")
        self.other_ca = make_private_ca(self.dir, "other")["ca"]
        path = write_config(self.dir, {"till-1": terminal})
        self.config_path = path
        self.creds = add_test_client(path, "odoo", rights=("pay", "read"))
        self.odoo = FakeOdoo(reactor, "shop", "terminal_bridge-" + CHANNEL_TOKEN, self.creds["client_id"],
                             self.creds["secret_in"], self.creds["secret_out"], FEEDBACK_SECRET)
        self.odoo_port = yield self.odoo.listen(self.tls["cert"], self.tls["key"])
        self.addCleanup(self.odoo_port.stopListening)
        self.addCleanup(self.odoo.stop)
        self.write_uplink(self.tls["ca"])

    def write_uplink(self, ca_file):
        secrets_path = os.path.join(self.dir, "odoo.secrets")
        fd = os.open(secrets_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"channel_token = {CHANNEL_TOKEN}\nfeedback_secret = {FEEDBACK_SECRET}\n")
        with open(self.config_path, "a") as f:
            f.write(f"[uplink:odoo]\nurl = https://127.0.0.1:{self.odoo_port.getHost().port}\ndatabase = shop\n"
                    f"client = odoo\nsecrets_file = odoo.secrets\nca_file = {ca_file}\n"
                    f"fetch_interval = {self.fetch_interval}\n")

    @inlineCallbacks
    def start_bridge(self):
        daemon = Daemon(load_config(self.config_path), reactor)
        yield daemon.start()
        self.addCleanup(self.stop_bridge, daemon)
        self.daemon = daemon
        return daemon

    @inlineCallbacks
    def stop_bridge(self, daemon):
        if daemon.journal is not None and not getattr(daemon, "_stopped_by_test", False):
            daemon._stopped_by_test = True
            yield daemon.stop()

    def status(self):
        return read_status(status_path(self.daemon.config.state_dir, "odoo")) or {}

    @inlineCallbacks
    def bus_open(self):
        yield wait_for(lambda: len(self.odoo.sockets) == 1 and self.odoo.subscriptions)

    @inlineCallbacks
    def final_feedback(self, count=1):
        yield wait_for(lambda: len([f for f in self.odoo.feedback if f["TBSTATE"] not in ("accepted",)]) >= count)
        return self.odoo.feedback


class HappyPath(UplinkEndToEnd):
    @inlineCallbacks
    def test_a_command_queued_in_odoo_is_paid_and_its_signed_feedback_arrives(self):
        yield self.start_bridge()
        yield self.bus_open()
        handshake = [h for h in self.odoo.handshakes if h["outcome"] == 101][0]["headers"]
        self.assertEqual(handshake["origin"], f"https://127.0.0.1:{self.odoo_port.getHost().port}")
        self.assertFalse(handshake["user-agent"].startswith("Mozilla/"))
        self.assertEqual(self.odoo.subscriptions[0], {"channels": ["terminal_bridge-" + CHANNEL_TOKEN], "last": 0,
                                                      "check_outdated": False})
        fetches = self.odoo.pending_requests
        command_id = self.odoo.queue_command("payment.start", PAYMENT)
        feedback = yield self.final_feedback()
        self.assertGreater(self.odoo.pending_requests, fetches)  # the wake-up made it fetch
        self.assertEqual(len(feedback), 1)
        fb = feedback[0]
        self.assertEqual((fb["ORDERID"], fb["STATUS"], fb["AMOUNT"], fb["CURRENCY"], fb["NCERROR"]),
                         (command_id, "9", "12.34", "EUR", "0"))
        self.assertRegex(fb["CARDNO"], r"^\d{6}X+\d{4}$")
        self.assertEqual(fb["TBCLIENT"], self.creds["client_id"])  # Odoo picks the passphrase by it
        self.assertTrue(fb["SHASIGN"])  # and verified by the fake, else it would be in feedback_rejected
        self.assertEqual(self.odoo.feedback_rejected, [])
        self.assertEqual(len(self.simulator.requests), 1)
        ack = self.odoo.acks[0]
        self.assertEqual(ack["command_id"], command_id)
        self.assertTrue(ack["reply_signed"])
        self.assertTrue(ack["reply"]["ok"])
        self.assertEqual(ack["reply"]["result"]["state"], "accepted")
        status = self.status()
        self.assertTrue(status["bus"])
        self.assertTrue(status["https"])
        # every request went with the database's session (the fake is a multi-database host)
        self.assertEqual(self.odoo.no_database_requests, [])
        # the last notification id handled is kept for the next subscribe
        self.assertGreaterEqual(self.daemon.uplinks.services[0].bus._store.last, 1)

    @inlineCallbacks
    def test_a_command_also_sent_over_the_lan_runs_once(self):
        from bridge.api.client import Credentials, connect
        from bridge.api.tls import fingerprint_of_pem

        daemon = yield self.start_bridge()
        yield self.bus_open()
        with open(daemon.config.tls_certificate, "rb") as f:
            fingerprint = fingerprint_of_pem(f.read())
        creds = Credentials(self.creds["client_id"], self.creds["secret_in"], self.creds["secret_out"])
        factory, opened = connect(reactor, f"wss://127.0.0.1:{daemon.port.getHost().port}", creds,
                                  fingerprint=fingerprint)
        proto = yield opened
        self.addCleanup(lambda: (proto.sendClose(), factory.closed)[1])
        yield proto.call("hello", {"client": creds.client_id})
        lan = yield proto.call("payment.start", PAYMENT, message_id="same-id-1")
        self.odoo.queue_command("payment.start", PAYMENT, command_id="same-id-1")
        yield self.final_feedback()
        yield wait_for(lambda: self.odoo.acks)
        self.assertEqual(self.odoo.acks[0]["reply"]["result"]["id"], lan["id"])
        self.assertEqual(len(self.simulator.requests), 1)
        yield sleep(0.2)
        self.assertEqual(len(self.odoo.feedback), 1)

    @inlineCallbacks
    def test_a_lan_payment_of_the_uplinks_client_is_fed_back_though_odoo_never_queued_it(self):
        from bridge.api.client import connect

        daemon = yield self.start_bridge()
        yield self.bus_open()
        creds = credentials_of(self.creds)
        factory, opened = connect(reactor, f"wss://127.0.0.1:{daemon.port.getHost().port}", creds,
                                  fingerprint=self.fingerprint(daemon))
        proto = yield opened
        self.addCleanup(lambda: (proto.sendClose(), factory.closed)[1])
        yield proto.call("hello", {"client": creds.client_id})
        yield proto.call("payment.start", PAYMENT, message_id="lan-only-1")
        feedback = yield self.final_feedback()
        self.assertEqual((feedback[0]["ORDERID"], feedback[0]["TBCLIENT"]), ("lan-only-1", creds.client_id))
        self.assertNotIn("lan-only-1", self.odoo.commands)  # unknown to Odoo, stored all the same (200)

    def fingerprint(self, daemon):
        from bridge.api.tls import fingerprint_of_pem

        with open(daemon.config.tls_certificate, "rb") as f:
            return fingerprint_of_pem(f.read())

    @inlineCallbacks
    def test_forged_and_stale_commands_never_reach_a_terminal(self):
        yield self.start_bridge()
        yield self.bus_open()
        self.odoo.sign_commands_with = new_secret()
        forged = self.odoo.queue_command("payment.start", PAYMENT)
        yield wait_for(lambda: any(a["command_id"] == forged for a in self.odoo.acks))
        self.odoo.sign_commands_with = None
        self.odoo.command_age = 3600
        stale = self.odoo.queue_command("payment.start", PAYMENT)
        yield wait_for(lambda: any(a["command_id"] == stale for a in self.odoo.acks))
        codes = {a["command_id"]: a["reply"]["error"]["code"] for a in self.odoo.acks}
        self.assertEqual(codes, {forged: "bad_signature", stale: "stale_timestamp"})
        self.assertEqual(self.simulator.requests, [])
        self.assertEqual(self.odoo.feedback, [])

    @inlineCallbacks
    def test_4001_makes_the_bridge_fetch_a_new_cookie_and_4002_reconnects_at_once(self):
        yield self.start_bridge()
        yield self.bus_open()
        first_cookie = self.odoo.sockets[0].cookie
        logins = self.odoo.logins
        self.odoo.expire_sessions()
        yield wait_for(lambda: len(self.odoo.sockets) == 1 and self.odoo.sockets[0].cookie != first_cookie)
        self.assertEqual(self.odoo.logins, logins + 1)
        refused = [h for h in self.odoo.handshakes if h["outcome"] != 101]
        self.assertEqual(refused, [])  # never retried with the dead cookie
        second = self.odoo.sockets[0]
        self.odoo.close_all(4002)
        yield wait_for(lambda: len(self.odoo.sockets) == 1 and self.odoo.sockets[0] is not second, timeout=2)
        self.assertEqual(self.odoo.sockets[0].cookie, second.cookie)  # 4002 keeps the session
        self.assertEqual(self.odoo.logins, logins + 1)
        # still working: a command after both reconnects
        self.odoo.queue_command("payment.start", PAYMENT)
        yield self.final_feedback()

    @inlineCallbacks
    def test_a_session_odoo_forgot_is_renewed_on_404_and_the_command_runs(self):
        yield self.start_bridge()
        yield self.bus_open()
        logins = self.odoo.logins
        self.odoo.sessions.clear()  # Odoo's session GC: the cookie now leads to no database
        command_id = self.odoo.queue_command("payment.start", PAYMENT)
        feedback = yield self.final_feedback()
        self.assertEqual(feedback[0]["ORDERID"], command_id)
        self.assertIn("/terminal_bridge/pending", self.odoo.no_database_requests)
        self.assertEqual(self.odoo.logins, logins + 1)  # one new session, shared by the fetch, ack and feedback
        self.assertEqual(self.status().get("https"), True)

    @inlineCallbacks
    def test_the_link_cut_mid_payment_delivers_the_feedback_after_reconnection_once(self):
        self.simulator.script = SimulatorScript(delay=0.5)
        yield self.start_bridge()
        yield self.bus_open()
        self.odoo.queue_command("payment.start", PAYMENT)
        yield wait_for(lambda: self.odoo.acks)
        self.odoo.websocket_down = True
        self.odoo.feedback_failures = 10**6
        self.odoo.drop_all()
        yield wait_for(lambda: self.odoo.feedback_attempts >= 2)
        self.assertEqual(self.odoo.feedback, [])
        self.odoo.websocket_down = False
        self.odoo.feedback_failures = 0
        yield self.final_feedback()
        yield self.bus_open()
        yield sleep(0.3)
        self.assertEqual(len(self.odoo.feedback), 1)
        self.assertEqual(self.odoo.feedback[0]["STATUS"], "9")


class AckBeforeFeedback(UplinkEndToEnd):
    """A terminal that answers at once: the result is final while the command's acknowledgement is still on its
    way. Odoo writes the payment's row for both; were they posted together, Odoo would retry the second after a
    random pause of up to 2 s. The result waits for the acknowledgement's answer."""

    @inlineCallbacks
    def test_a_result_is_posted_once_its_commands_acknowledgement_is_answered(self):
        yield self.start_bridge()
        yield self.bus_open()
        poster = self.daemon.uplinks.services[0].poster
        self.odoo.ack_hold = True
        self.odoo.queue_command("payment.start", PAYMENT)
        # The terminal answered and the result is final; the poster then either posts it or waits for the ack.
        yield wait_for(lambda: self.odoo.acks_held == 1 and (poster.waiting_for_ack or self.odoo.feedback_attempts))
        self.assertEqual(self.odoo.feedback_attempts, 0)  # not while the ack is unanswered
        self.assertEqual(len(self.simulator.requests), 1)
        self.odoo.release_acks()
        feedback = yield self.final_feedback()
        self.assertEqual([f["STATUS"] for f in feedback], ["9"])
        self.assertEqual(self.odoo.arrivals, ["ack", "feedback"])
        self.assertIsNone(poster.waiting_for_ack)


class AckHanging(UplinkEndToEnd):
    @inlineCallbacks
    def test_a_result_waits_for_a_hanging_acknowledgement_only_so_long(self):
        self.patch(feedback_module, "ACK_WAIT_MAX", 0.2)
        yield self.start_bridge()
        yield self.bus_open()
        self.odoo.ack_hold = True  # Odoo never answers the ack (until the test's cleanup)
        self.odoo.queue_command("payment.start", PAYMENT)
        feedback = yield self.final_feedback()
        self.assertEqual([f["STATUS"] for f in feedback], ["9"])
        self.assertEqual(self.odoo.acks_held, 1)  # the result went while the ack was still unanswered
        self.odoo.release_acks()


class FeedbackFailing(UplinkEndToEnd):
    @inlineCallbacks
    def test_feedback_failing_then_restart_delivers_everything_in_order_once(self):
        yield self.start_bridge()
        yield self.bus_open()
        self.odoo.feedback_failures = 10**6
        ids = [self.odoo.queue_command("payment.start", PAYMENT) for _ in range(1)]
        yield wait_for(lambda: self.odoo.feedback_attempts >= 3)
        from bridge.cli.uplink import uplink_report

        report = uplink_report(self.daemon.config)[0]
        self.assertEqual((report["running"], report["feedback_waiting"]), (True, 1))
        self.assertIn("HTTP 500", report["feedback_error"])
        first = self.daemon
        yield first.stop()
        first._stopped_by_test = True
        # the second payment happens on the next run, while the first's feedback still waits
        self.odoo.feedback_failures = 0
        self.odoo.feedback_hang = False
        yield self.start_bridge()
        ids.append(self.odoo.queue_command("payment.start", PAYMENT))
        yield wait_for(lambda: len(self.odoo.feedback) >= 2)
        yield sleep(0.3)
        self.assertEqual([f["ORDERID"] for f in self.odoo.feedback], ids)
        seqs = [int(f["TBSEQ"]) for f in self.odoo.feedback]
        self.assertEqual(seqs, sorted(seqs))
        self.assertEqual(len(self.simulator.requests), 2)


class BusDown(UplinkEndToEnd):
    fetch_interval = 1

    @inlineCallbacks
    def test_with_the_bus_down_the_periodic_fetch_still_runs_commands(self):
        self.odoo.websocket_down = True
        yield self.start_bridge()
        self.odoo.queue_command("payment.start", PAYMENT)
        yield self.final_feedback()
        self.assertEqual(self.odoo.sockets, [])
        yield wait_for(lambda: self.status().get("last_error"))
        self.assertIn("503", self.status()["last_error"])


class StatusExit(UplinkEndToEnd):
    """`uplink status` exits 0 only when payments can flow."""

    def exit_status(self):
        from bridge.cli.uplink import show_status

        return show_status(self.daemon.config)

    @inlineCallbacks
    def test_bus_up_but_every_fetch_refused_is_exit_1(self):
        yield self.start_bridge()
        yield self.bus_open()
        yield wait_for(lambda: self.status().get("https"))
        self.assertEqual(self.exit_status(), 0)
        self.odoo.pending_status = 403
        self.odoo.notify("terminal_bridge/wakeup", {})  # the wake-up's fetch is refused
        yield wait_for(lambda: self.status().get("https") is False)
        self.assertTrue(self.status()["bus"])
        self.assertEqual(self.exit_status(), 1)
        self.odoo.pending_status = None
        self.odoo.notify("terminal_bridge/wakeup", {})
        yield wait_for(lambda: self.status().get("https"))
        self.assertEqual(self.exit_status(), 0)

    @inlineCallbacks
    def test_odoo_down_is_exit_1(self):
        yield self.start_bridge()
        yield self.bus_open()
        yield wait_for(lambda: self.status().get("https"))
        self.assertEqual(self.exit_status(), 0)
        yield self.odoo.go_down()
        yield wait_for(lambda: self.status().get("https") is False)
        self.assertEqual(self.exit_status(), 1)


class FlowRule(UplinkEndToEnd):
    def test_a_stale_fetch_with_the_bus_down_is_not_flowing(self):
        from bridge.uplink.service import payments_can_flow

        uplink = load_config(self.config_path).uplinks["odoo"]  # fetch_interval 30: recent is 90 s
        up = {"running": True, "https": True, "bus": False, "fetched_at": 1000.0}
        self.assertEqual(payments_can_flow(up, 1089.0, uplink), (True, None))
        self.assertFalse(payments_can_flow(up, 1091.0, uplink)[0])
        self.assertEqual(payments_can_flow(dict(up, bus=True), 5000.0, uplink), (True, None))
        self.assertFalse(payments_can_flow(dict(up, https=False, bus=True), 1000.0, uplink)[0])


class PreforkWithoutRoute(UplinkEndToEnd):
    fetch_interval = 1

    @inlineCallbacks
    def test_odoo_answering_the_bus_with_http_1_0_500_says_what_to_route(self):
        self.odoo.websocket_prefork = True
        yield self.start_bridge()
        yield wait_for(lambda: "8072" in (self.status().get("last_error") or ""))
        error = self.status()["last_error"]
        self.assertIn("route /websocket to Odoo's gevent port (8072) in the reverse proxy", error)
        self.assertIn("--workers=0", error)
        self.assertNotIn("HTTP version", error)
        self.odoo.queue_command("payment.start", PAYMENT)  # the periodic fetch still runs commands
        yield self.final_feedback()


class OversizedAnswer(UplinkEndToEnd):
    fetch_interval = 1

    @inlineCallbacks
    def test_a_pending_answer_over_one_mib_is_an_error_in_words_and_the_next_fetch_works(self):
        self.odoo.pending_padding = 2 * 1024 * 1024
        yield self.start_bridge()
        yield wait_for(lambda: "larger than 1048576 bytes" in (self.status().get("last_error") or ""))
        self.assertIn("Odoo's list of commands is larger than 1048576 bytes: Odoo must serve fewer or smaller",
                      self.status()["last_error"])
        self.assertFalse(self.status()["https"])
        self.odoo.pending_padding = 0
        self.odoo.queue_command("payment.start", PAYMENT)
        feedback = yield self.final_feedback()
        self.assertEqual(feedback[0]["STATUS"], "9")
        self.assertTrue(self.status()["https"])


class WrongCA(UplinkEndToEnd):
    fetch_interval = 1

    def write_uplink(self, ca_file):
        super().write_uplink(self.other_ca)

    @inlineCallbacks
    def test_an_odoo_with_a_certificate_from_another_ca_is_refused_in_clear_words(self):
        yield self.start_bridge()
        self.odoo.queue_command("payment.start", PAYMENT)
        yield wait_for(lambda: "certificate" in (self.status().get("last_error") or ""))
        self.assertIn("ca_file", self.status()["last_error"])
        self.assertEqual(self.odoo.pending_requests, 0)
        self.assertEqual(self.odoo.logins, 0)
        self.assertEqual(self.simulator.requests, [])
