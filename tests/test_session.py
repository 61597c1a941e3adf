"""The command protocol's checks and ops, transport aside (the WebSocket itself: test_end_to_end.py)."""

import json
import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from bridge.api import signing
from bridge.api.session import Bridge, Session
from bridge.core.journal import Journal
from bridge.core.payments import PaymentService
from bridge.core.registry import TerminalRegistry
from tests.support import APPROVED, LINK_LOST, RecordingDriver, add_test_client, load_config, write_config

NOW = 1_700_000_000


class SessionTests(SynchronousTestCase):
    def setUp(self):
        directory = self.mktemp()
        os.makedirs(directory)
        path = write_config(directory, {"till-1": "127.0.0.1:9"})
        self.client = add_test_client(path, "pos")
        self.reader = add_test_client(path, "reader", rights=("read",))
        self.config = load_config(path, messages_per_second=1000)
        self.clock = Clock()
        self.clock.advance(NOW)
        self.journal = Journal.open(os.path.join(directory, "j.sqlite3"), threaded=False)
        self.addCleanup(self.journal.close)
        self.driver = RecordingDriver("till-1")
        self.payments = PaymentService(self.journal, TerminalRegistry([self.driver]), self.clock)
        self.bridge = Bridge(self.config, self.payments, self.clock, fingerprint="AA")
        self.sent = []
        self.sinks = {}
        self.session = self.new_session(self.sent)
        self.counter = 0

    def new_session(self, sink):
        session = Session(self.bridge, sink.append, peer="test")
        self.sinks[session] = sink
        return session

    def command(self, op, args=None, client=None, ts=NOW, message_id=None, session=None, **changes):
        client = client or self.client
        self.counter += 1
        message = {"id": f"m{self.counter}" if message_id is None else message_id, "op": op, "ts": ts, "args": args or {}}
        message = signing.signed(message, client["secret_in"], client["algorithm"])
        message.update(changes)
        session = session or self.session
        session.message_received(json.dumps(message))
        return [m for m in self.sinks[session] if "re" in m][-1]

    def hello(self, client=None, session=None):
        reply = self.command("hello", {"client": (client or self.client)["client_id"]}, client=client,
                             session=session)
        self.assertTrue(reply["ok"], reply)
        return reply

    def assert_error(self, reply, code):
        self.assertFalse(reply["ok"], reply)
        self.assertEqual(reply["error"]["code"], code)
        self.assertTrue(reply["error"]["message"])

    def test_replies_are_signed_with_the_outbound_secret(self):
        reply = self.hello()
        self.assertTrue(signing.verify(reply, self.client["secret_out"]))
        self.assertFalse(signing.verify(reply, self.client["secret_in"]))
        self.assertEqual(reply["result"]["client"], "cl_pos")

    def test_malformed_json_is_refused(self):
        for text in ("{", "", "[1,2]", '"hello"', "null"):
            self.session.message_received(text)
            self.assertIn(self.sent[-1]["error"]["code"], ("bad_json", "bad_message"))
        self.assertEqual(self.journal.list(), [])

    def test_envelope_problems_are_named(self):
        self.assert_error(self.command("hello", message_id=""), "bad_message")
        self.assert_error(self.command("hello", ts="yesterday"), "bad_message")
        self.session.message_received(json.dumps(signing.signed(
            {"id": "x", "op": "hello", "ts": NOW, "args": [1]}, self.client["secret_in"])))
        self.assert_error(self.sent[-1], "bad_message")
        self.assert_error(self.command("payment.steal"), "unknown_op")

    def test_commands_before_hello_are_refused(self):
        self.assert_error(self.command("terminal.list"), "not_authenticated")

    def test_unknown_client(self):
        self.assert_error(self.command("hello", {"client": "cl_nobody"}), "unknown_client")

    def test_bad_signature_is_refused_and_does_not_authenticate(self):
        self.assert_error(self.command("hello", {"client": "cl_pos"}, sig="0" * 64), "bad_signature")
        self.assert_error(self.command("terminal.list"), "not_authenticated")
        # signed with the outbound secret instead of the inbound one
        wrong = dict(self.client, secret_in=self.client["secret_out"])
        self.assert_error(self.command("hello", {"client": "cl_pos"}, client=wrong), "bad_signature")

    def test_a_payment_with_a_bad_signature_sends_nothing(self):
        self.hello()
        reply = self.command("payment.start", {"terminal": "till-1", "amount": 100, "currency": "EUR"},
                             sig="f" * 64)
        self.assert_error(reply, "bad_signature")
        self.assertEqual((self.driver.sent, self.journal.list()), ([], []))

    def test_stale_and_future_timestamps_are_refused(self):
        self.assert_error(self.command("hello", {"client": "cl_pos"}, ts=NOW - 3600), "stale_timestamp")
        self.assert_error(self.command("hello", {"client": "cl_pos"}, ts=NOW + 3600), "stale_timestamp")
        self.hello()

    def test_a_replayed_command_is_refused(self):
        self.hello()
        self.assertTrue(self.command("terminal.list", message_id="same")["ok"])
        self.assert_error(self.command("terminal.list", message_id="same"), "replayed")

    def test_a_repeated_payment_start_returns_the_same_payment(self):
        self.hello()
        args = {"terminal": "till-1", "amount": 100, "currency": "EUR"}
        first = self.command("payment.start", args, message_id="pay-1")
        again = self.command("payment.start", args, message_id="pay-1")
        self.assertEqual(first["result"]["id"], again["result"]["id"])
        self.assertEqual(len(self.driver.sent), 1)

    def test_rights_are_enforced(self):
        self.hello(self.reader)
        reply = self.command("payment.start", {"terminal": "till-1", "amount": 100, "currency": "EUR"},
                             client=self.reader)
        self.assert_error(reply, "forbidden")
        self.assertTrue(self.command("terminal.list", client=self.reader)["ok"])

    def test_too_many_messages_are_refused(self):
        from dataclasses import replace

        self.bridge.config = replace(self.config, messages_per_second=2)
        session = self.new_session(self.sent)
        for _ in range(5):  # a burst of twice the rate passes, the next is refused
            session.message_received("{}")
        self.assert_error(self.sent[-1], "rate_limited")
        self.assertIsNone(self.sent[-1]["re"])
        # A refused command is named, so that its client can send it again rather than wait for ever.
        session.message_received(json.dumps({"id": "cmd-9", "op": "payment.start"}))
        self.assert_error(self.sent[-1], "rate_limited")
        self.assertEqual(self.sent[-1]["re"], "cmd-9")
        self.clock.advance(2)
        session.message_received("{}")
        self.assertNotEqual(self.sent[-1]["error"]["code"], "rate_limited")

    def test_terminal_list_and_status(self):
        self.hello()
        terminals = self.command("terminal.list")["result"]["terminals"]
        self.assertEqual([(t["name"], t["state"]) for t in terminals], [("till-1", "idle")])
        self.assertEqual(self.command("terminal.status", {"terminal": "till-1"})["result"]["type"], "recording")
        self.assert_error(self.command("terminal.status", {"terminal": "x"}), "unknown_terminal")

    def test_events_reach_the_client_that_started_the_payment_signed(self):
        self.hello()
        other_sent = []
        other = self.new_session(other_sent)
        self.hello(self.reader, session=other)
        reply = self.command("payment.start", {"terminal": "till-1", "amount": 100, "currency": "EUR"})
        self.driver.finish(APPROVED)
        events = [m for m in self.sent if "seq" in m]
        self.assertEqual([e["payment"]["state"] for e in events], ["accepted", "in_progress", "approved"])
        self.assertTrue(all(signing.verify(e, self.client["secret_out"]) for e in events))
        self.assertEqual(events[-1]["payment"]["id"], reply["result"]["id"])
        self.assertEqual([m for m in other_sent if "seq" in m], [])

    def test_missed_events_are_resent_after_reconnect_until_acknowledged(self):
        self.hello()
        self.command("payment.start", {"terminal": "till-1", "amount": 100, "currency": "EUR"})
        self.session.connection_lost()
        self.driver.finish(APPROVED)  # while the client is away
        sent = []
        again = self.new_session(sent)
        self.hello(session=again)
        states = [m["payment"]["state"] for m in sent if "seq" in m]
        self.assertEqual(states, ["accepted", "in_progress", "approved"])
        last = [m for m in sent if "seq" in m][-1]["seq"]
        # An ack ahead of the last event would hide the next ones from every replay: refused, nothing recorded.
        self.assert_error(self.command("events.ack", {"seq": last + 1}, session=again), "bad_request")
        self.assertEqual(self.journal.acked(self.client["client_id"]), 0)
        self.command("events.ack", {"seq": last}, session=again)
        self.assertTrue(sent[-1]["ok"])
        sent2 = []
        third = self.new_session(sent2)
        self.hello(session=third)
        self.assertEqual([m for m in sent2 if "seq" in m], [])
        self.command("events.resume", {"after": 0}, session=third)
        self.assertEqual(len([m for m in sent2 if "seq" in m]), 3)

    PAY = {"terminal": "till-1", "amount": 100, "currency": "EUR"}

    def _one_payment_handled(self):
        self.hello()
        self.command("payment.start", dict(self.PAY))
        self.driver.finish(APPROVED)
        return [m for m in self.sent if "seq" in m][-1]["seq"]

    def test_a_payment_start_can_carry_the_ack_of_the_events_handled(self):
        last = self._one_payment_handled()
        reply = self.command("payment.start", dict(self.PAY, ack=last))
        self.assertTrue(reply["ok"], reply)
        self.assertEqual(reply["result"]["state"], "accepted")
        self.assertEqual(self.journal.acked(self.client["client_id"]), last)
        sent = []
        self.hello(session=self.new_session(sent))  # only what came after the ack is sent again
        self.assertEqual([m["payment"]["state"] for m in sent if "seq" in m], ["accepted", "in_progress"])
        self.assertTrue(all(m["seq"] > last for m in sent if "seq" in m))

    def test_a_bad_carried_ack_refuses_the_command_and_changes_nothing(self):
        last = self._one_payment_handled()
        for ack in (last + 1, -1, True, "3", None, 1.5):
            self.assert_error(self.command("payment.start", dict(self.PAY, ack=ack)), "bad_request")
        self.assertEqual((len(self.driver.sent), len(self.journal.list())), (1, 1))
        self.assertEqual(self.journal.acked(self.client["client_id"]), 0)

    def test_a_refused_command_records_no_carried_ack(self):
        last = self._one_payment_handled()
        self.assert_error(self.command("payment.start", dict(self.PAY, terminal="till-9", ack=last)),
                          "unknown_terminal")
        self.assertEqual(self.journal.acked(self.client["client_id"]), 0)

    def test_a_carried_ack_needs_the_read_right(self):
        directory = self.mktemp()
        os.makedirs(directory)
        path = write_config(directory, {"till-1": "127.0.0.1:9"})
        payer = add_test_client(path, "payer", rights=("pay",))
        self.bridge.config = load_config(path, messages_per_second=1000)
        self.hello(payer)
        self.assert_error(self.command("payment.start", dict(self.PAY, ack=0), client=payer), "forbidden")
        self.assertEqual((self.driver.sent, self.journal.list()), ([], []))
        self.assertTrue(self.command("payment.start", dict(self.PAY), client=payer)["ok"])

    def test_a_refund_can_carry_the_ack_too(self):
        directory = self.mktemp()
        os.makedirs(directory)
        path = write_config(directory, {"till-1": "127.0.0.1:9"})
        refunder = add_test_client(path, "refunder", rights=("pay", "read", "refund"))
        self.bridge.config = load_config(path, messages_per_second=1000)
        self.hello(refunder)
        paid = self.command("payment.start", dict(self.PAY), client=refunder)["result"]
        self.driver.finish(APPROVED)
        last = [m for m in self.sent if "seq" in m][-1]["seq"]
        reply = self.command("payment.refund", {"payment_id": paid["id"], "ack": last}, client=refunder)
        self.assertTrue(reply["ok"], reply)
        self.assertEqual(reply["result"]["kind"], "refund")
        self.assertEqual(self.journal.acked(refunder["client_id"]), last)

    def test_payment_get_by_id_or_command_and_only_ones_own(self):
        self.hello()
        started = self.command("payment.start", {"terminal": "till-1", "amount": 100, "currency": "EUR"},
                               message_id="p-1")["result"]
        self.assertEqual(self.command("payment.get", {"payment_id": started["id"]})["result"]["id"], started["id"])
        self.assertEqual(self.command("payment.get", {"command_id": "p-1"})["result"]["id"], started["id"])
        self.assert_error(self.command("payment.get", {"payment_id": "pay_x"}), "unknown_payment")
        self.assert_error(self.command("payment.get", {}), "bad_request")
        self.hello(self.reader)
        self.assert_error(self.command("payment.get", {"payment_id": started["id"]}, client=self.reader),
                          "unknown_payment")

    def test_a_long_backlog_is_sent_in_pages(self):
        from bridge.api import session as session_module

        self.patch(session_module, "REPLAY_LIMIT", 2)
        self.hello()
        self.command("payment.start", {"terminal": "till-1", "amount": 100, "currency": "EUR"})
        self.driver.finish(APPROVED)
        sent = []
        again = self.new_session(sent)
        reply = self.hello(session=again)
        self.assertTrue(reply["result"]["more_events"])
        seqs = [m["seq"] for m in sent if "seq" in m]
        self.assertEqual(len(seqs), 2)
        self.command("events.resume", {"after": seqs[-1]}, session=again)
        self.assertEqual([m["payment"]["state"] for m in sent if "seq" in m], ["accepted", "in_progress", "approved"])
        resumed = [m for m in sent if m.get("re") is not None][-1]
        self.assertFalse(resumed["result"]["more_events"])

    def test_command_ids_are_forgotten_once_outside_the_freshness_window(self):
        self.hello()
        self.assertTrue(self.command("terminal.list", message_id="old")["ok"])
        self.clock.advance(3 * self.config.clock_skew)
        ts = NOW + 3 * self.config.clock_skew
        self.assertTrue(self.command("terminal.list", message_id="new", ts=ts)["ok"])
        self.assertEqual(len(self.bridge._replays), 1)  # hello's and "old" are forgotten, "new" is kept
        self.assert_error(self.command("terminal.list", message_id="new", ts=ts), "replayed")
        # a replay of the old id is now refused by its timestamp, not by the memory
        self.assert_error(self.command("terminal.list", message_id="old"), "stale_timestamp")

    def test_payment_list_checks_its_arguments_and_shows_only_ones_own(self):
        self.hello()
        started = self.command("payment.start", {"terminal": "till-1", "amount": 100, "currency": "EUR"})["result"]
        page = self.command("payment.list", {"limit": 10})["result"]
        self.assertEqual([p["id"] for p in page["payments"]], [started["id"]])
        for args in ({"limit": 0}, {"limit": 201}, {"limit": "5"}, {"since": "yesterday"}, {"state": 3},
                     {"cursor": "not-a-cursor"}):
            self.assert_error(self.command("payment.list", args), "bad_request")
        self.hello(self.reader)
        self.assertEqual(self.command("payment.list", {}, client=self.reader)["result"]["payments"], [])

    def test_cancel_resolve_and_refund_through_the_protocol(self):
        self.hello()
        started = self.command("payment.start", {"terminal": "till-1", "amount": 100, "currency": "EUR"})["result"]
        cancel = self.command("payment.cancel", {"payment_id": started["id"]})["result"]
        self.assertEqual(cancel["cancel"], "on_terminal")  # only the terminal can cancel now
        self.assert_error(self.command("payment.cancel", {"payment_id": "pay_none"}), "unknown_payment")
        # the pay client has neither the resolve nor the refund right
        self.assert_error(self.command("payment.resolve", {"payment_id": started["id"], "outcome": "approved",
                                                           "note": "receipt"}), "forbidden")
        self.assert_error(self.command("payment.refund", {"payment_id": started["id"]}), "forbidden")
        self.driver.finish(LINK_LOST)
        self.assert_error(self.command("payment.cancel", {"payment_id": started["id"]}), "payment_final")

    def test_a_client_with_the_resolve_right_settles_an_unknown_payment(self):
        boss = add_test_client(self.config.path, "boss", rights=("read", "resolve", "refund", "admin"))
        self.bridge.config = load_config(self.config.path, messages_per_second=1000)
        self.hello()
        started = self.command("payment.start", {"terminal": "till-1", "amount": 100, "currency": "EUR"})["result"]
        self.driver.finish(LINK_LOST)
        boss_sent = []
        boss_session = self.new_session(boss_sent)
        self.hello(boss, session=boss_session)
        args = {"payment_id": started["id"], "outcome": "approved"}
        self.assert_error(self.command("payment.resolve", args, client=boss, session=boss_session), "bad_request")
        resolved = self.command("payment.resolve", dict(args, note="receipt shows approved, auth 123456"),
                                client=boss, session=boss_session)["result"]
        self.assertEqual((resolved["state"], resolved["details"]["resolved_by"]), ("approved", "cl_boss"))
        refund = self.command("payment.refund", {"payment_id": started["id"], "amount": 40}, client=boss,
                              session=boss_session)["result"]
        self.assertEqual((refund["kind"], refund["amount"]), ("refund", 40))
        self.assert_error(self.command("payment.refund", {"payment_id": started["id"], "amount": 61}, client=boss,
                                       session=boss_session), "refund_too_large")

    # -- hostile input (issue 13, item 2): each gets its documented code and the connection stays usable ----

    def wire_session(self):
        """A session that serialises what it sends, as the WebSocket server does (encoding errors show)."""
        sink = []
        session = Session(self.bridge, sink.append, peer="test",
                          send_bytes=lambda data: sink.append(json.loads(data.decode("utf-8"))))
        self.sinks[session] = sink
        return session, sink

    def assert_still_usable(self, session):
        self.hello(session=session)
        self.assertTrue(self.command("terminal.list", session=session)["ok"])

    def test_json_nested_thousands_deep_is_bad_json(self):
        session, sink = self.wire_session()
        for text in ("[" * 5000 + "]" * 5000, '{"id":"x","args":' + "[" * 40 + "]" * 40 + "}"):
            session.message_received(text)
            self.assert_error(sink[-1], "bad_json")
        self.assert_still_usable(session)

    def test_an_escaped_lone_surrogate_is_bad_json_and_the_reply_can_be_sent(self):
        session, sink = self.wire_session()
        session.message_received('{"id": "\\ud800", "op": "hello", "ts": 1, "args": {}}')
        self.assert_error(sink[-1], "bad_json")
        self.assertIsNone(sink[-1]["re"])
        self.assert_still_usable(session)

    def test_non_json_numbers_are_bad_json(self):
        session, sink = self.wire_session()
        for text in ('{"id": "a", "ts": NaN}', '{"id": "a", "ts": Infinity}', '{"ts": -Infinity}'):
            session.message_received(text)
            self.assert_error(sink[-1], "bad_json")

    def test_a_signed_timestamp_of_ten_to_the_400_is_stale(self):
        session, sink = self.wire_session()
        self.assert_error(self.command("hello", {"client": self.client["client_id"]}, ts=10 ** 400,
                                       session=session), "stale_timestamp")
        self.assert_error(self.command("hello", {"client": self.client["client_id"]}, ts=1e300,
                                       session=session), "stale_timestamp")
        self.assert_still_usable(session)

    def test_events_resume_after_the_last_event_is_a_bad_request(self):
        session, sink = self.wire_session()
        self.hello(session=session)
        for after in (2 ** 63, 2 ** 64 + 5, 1):
            self.assert_error(self.command("events.resume", {"after": after}, session=session), "bad_request")
        self.assertTrue(self.command("events.resume", {"after": 0}, session=session)["ok"])

    def test_a_bare_null_is_bad_message(self):
        self.session.message_received("null")
        self.assert_error(self.sent[-1], "bad_message")

    def test_unknown_payment_start_arguments_are_refused_by_name(self):
        self.hello()
        reply = self.command("payment.start", {"terminal": "till-1", "amount": 100, "currency": "EUR", "tip": 500})
        self.assert_error(reply, "bad_request")
        self.assertIn("'tip'", reply["error"]["message"])
        self.assertEqual((self.journal.list(), self.driver.sent), ([], []))

    def test_payment_list_times_too_large_for_a_float_are_bad_requests(self):
        self.hello()
        self.assert_error(self.command("payment.list", {"since": 10 ** 400}), "bad_request")

    # -- rights (issue 13, item 5) -----------------------------------------------------------------------

    def test_an_unlinked_refund_needs_the_refund_right(self):
        self.hello()
        reply = self.command("payment.start", {"terminal": "till-1", "amount": 100, "currency": "EUR",
                                               "kind": "refund"})
        self.assert_error(reply, "forbidden")
        self.assertIn("'refund'", reply["error"]["message"])
        self.assertEqual((self.journal.list(), self.driver.sent), ([], []))
        # a debit is still the pay right's
        self.assertTrue(self.command("payment.start", {"terminal": "till-1", "amount": 100, "currency": "EUR",
                                                       "kind": "debit"})["ok"])

    def test_a_client_with_the_refund_right_may_start_an_unlinked_refund(self):
        refunder = add_test_client(self.config.path, "refunder", rights=("pay", "refund"))
        self.bridge.config = load_config(self.config.path, messages_per_second=1000)
        session = self.new_session([])
        self.hello(refunder, session=session)
        reply = self.command("payment.start", {"terminal": "till-1", "amount": 100, "currency": "EUR",
                                               "kind": "refund"}, client=refunder, session=session)
        self.assertEqual(reply["result"]["kind"], "refund")

    # -- idempotency per client (issue 13, item 6) -------------------------------------------------------

    def test_another_clients_command_id_is_neither_revealed_nor_taken(self):
        other = add_test_client(self.config.path, "other", rights=("pay", "read"))
        self.bridge.config = load_config(self.config.path, messages_per_second=1000)
        self.hello()
        mine = self.command("payment.start", {"terminal": "till-1", "amount": 100, "currency": "EUR"},
                            message_id="order-1")["result"]
        self.driver.finish(APPROVED)
        session = self.new_session([])
        self.hello(other, session=session)
        self.assert_error(self.command("payment.get", {"command_id": "order-1"}, client=other, session=session),
                          "unknown_payment")
        theirs = self.command("payment.start", {"terminal": "till-1", "amount": 999, "currency": "EUR"},
                              client=other, session=session, message_id="order-1")
        self.assertTrue(theirs["ok"], theirs)
        self.assertNotEqual(theirs["result"]["id"], mine["id"])
        self.assertEqual(self.command("payment.get", {"command_id": "order-1"}, client=other,
                                      session=session)["result"]["id"], theirs["result"]["id"])
        self.assertEqual(self.command("payment.get", {"command_id": "order-1"})["result"]["id"], mine["id"])
