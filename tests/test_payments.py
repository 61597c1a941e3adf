import os

from twisted.internet.defer import Deferred

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from bridge.core.journal import Journal
from bridge.core.payments import PaymentService
from bridge.core.registry import TerminalRegistry
from bridge.errors import BridgeError
from bridge.core.contract import Outcome
from tests.support import APPROVED, DECLINED, LINK_LOST, RecordingDriver

ARGS = {"terminal": "till-1", "amount": 1234, "currency": "EUR"}


class PaymentServiceTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.path = os.path.join(self.mktemp(), "journal.sqlite3")
        self.journal = Journal.open(self.path, threaded=False, now=self.clock.seconds)
        self.addCleanup(self.journal.close)
        self.driver = RecordingDriver("till-1")
        self.service = self._service(self.journal)
        self.events = []
        self.service.subscribe(lambda e: self.events.append((e.seq, e.body["payment"]["state"])))

    def _service(self, journal):
        counter = iter(range(1, 10**6))
        return PaymentService(journal, TerminalRegistry([self.driver]), self.clock,
                              new_id=lambda: f"pay_{next(counter)}")

    def start(self, command_id="cmd-1", args=ARGS, client="cl_a"):
        return self.service.start(client, command_id, dict(args))

    def error_code(self, d):
        return self.failureResultOf(d, BridgeError).value.code

    def test_a_payment_is_journaled_before_the_terminal_hears_of_it(self):
        journal_states_at_send = []
        original = self.driver.pay

        def pay(request, before_send):
            def spy():
                d = before_send()
                d.addCallback(lambda r: journal_states_at_send.append(self.journal.get(request.payment_id).state)
                              or r)
                return d
            return original(request, spy)

        self.driver.pay = pay
        view = self.successResultOf(self.start())
        self.assertEqual(view["state"], "accepted")  # the reply says what was journaled when it was made
        self.assertEqual(journal_states_at_send, ["in_progress"])
        self.assertEqual(len(self.driver.sent), 1)

    def test_approved_outcome_is_journaled_then_told(self):
        view = self.successResultOf(self.start())
        self.driver.finish(APPROVED)
        self.assertEqual(self.journal.get(view["id"]).state, "approved")
        self.assertEqual([s for _, s in self.events], ["accepted", "in_progress", "approved"])
        self.assertEqual([seq for seq, _ in self.events], [1, 2, 3])
        self.assertEqual(self.service.get(view["id"])["details"], {"authorisation": "123456"})

    def test_the_end_is_told_before_its_log_line_is_written(self):
        from twisted.logger import Logger

        order = []
        self.service.log = Logger(observer=lambda e: order.append("logged " + str(e.get("state"))))
        self.service.subscribe(lambda e: order.append("told " + e.body["payment"]["state"]))
        self.successResultOf(self.start())
        self.driver.finish(APPROVED)
        self.assertEqual(order[-2:], ["told approved", "logged approved"])

    def test_the_same_command_id_returns_the_same_payment_and_sends_nothing_more(self):
        first = self.successResultOf(self.start())
        again = self.successResultOf(self.start())
        self.assertEqual(first["id"], again["id"])
        self.driver.finish(APPROVED)
        after = self.successResultOf(self.start())
        self.assertEqual((after["id"], after["state"]), (first["id"], "approved"))
        self.assertEqual(len(self.driver.sent), 1)

    def test_the_same_command_id_with_other_arguments_is_a_mismatch(self):
        self.successResultOf(self.start())
        self.assertEqual(self.error_code(self.start(args=dict(ARGS, amount=999))), "idempotency_mismatch")
        self.assertEqual(len(self.driver.sent), 1)

    def test_command_ids_are_each_clients_own(self):
        # issue 13 item 6: another client's id tells nothing, blocks nothing, and is never its payment
        first = self.successResultOf(self.start("cmd-1", client="cl_a"))
        self.driver.finish(APPROVED)
        other = self.successResultOf(self.start("cmd-1", args=dict(ARGS, amount=999), client="cl_b"))
        self.assertNotEqual(other["id"], first["id"])
        self.assertEqual((other["amount"], other["state"]), (999, "accepted"))
        self.assertEqual(len(self.driver.sent), 2)
        # and each client's repeat still finds its own payment
        self.assertEqual(self.successResultOf(self.start("cmd-1", client="cl_a"))["id"], first["id"])
        self.assertEqual(self.successResultOf(self.start("cmd-1", args=dict(ARGS, amount=999),
                                                         client="cl_b"))["id"], other["id"])
        self.assertEqual(len(self.driver.sent), 2)
        self.assertEqual(self.service.get_by_command("cl_b", "cmd-1")["id"], other["id"])

    def test_a_stopping_bridge_takes_no_new_payment_and_waits_for_the_running_one(self):
        self.successResultOf(self.start("cmd-1"))
        self.service.stop_taking()
        self.assertEqual(self.error_code(self.start("cmd-2", args=dict(ARGS, terminal="till-1"))), "bridge_stopping")
        self.assertEqual(self.service.running(), 1)
        idle = self.service.wait_idle()
        self.assertNoResult(idle)
        self.driver.finish(APPROVED)
        self.successResultOf(idle)
        self.assertEqual((self.service.running(), len(self.driver.sent)), (0, 1))

    def test_a_busy_terminal_refuses_a_second_payment(self):
        self.successResultOf(self.start("cmd-1"))
        self.assertEqual(self.error_code(self.start("cmd-2")), "terminal_busy")
        self.driver.finish(DECLINED)
        self.successResultOf(self.start("cmd-3"))
        self.assertEqual(len(self.driver.sent), 2)

    def test_invalid_commands_change_nothing(self):
        cases = {
            "unknown_terminal": dict(ARGS, terminal="nope"),
            "invalid_amount": dict(ARGS, amount=0),
            "unknown_currency": dict(ARGS, currency="EURO"),
            "bad_request": dict(ARGS, kind="steal"),
        }
        for code, args in cases.items():
            self.assertEqual(self.error_code(self.start(f"cmd-{code}", args)), code)
        for amount in (-5, 12.5, "12", 10**12, None):
            self.assertEqual(self.error_code(self.start("cmd-x", dict(ARGS, amount=amount))), "invalid_amount")
        self.assertEqual(self.error_code(self.start("", ARGS)), "bad_request")
        self.assertEqual(self.driver.sent, [])
        self.assertEqual(self.journal.list(), [])
        self.assertEqual(self.events, [])

    def test_an_unreachable_terminal_fails_without_sending(self):
        self.driver.refuse_link = True
        view = self.successResultOf(self.start())
        record = self.journal.get(view["id"])
        self.assertEqual((record.state, record.reason_code), ("failed", "terminal_unreachable"))
        self.assertEqual(self.driver.sent, [])

    def test_a_journal_that_cannot_record_in_progress_means_nothing_is_sent(self):
        self.successResultOf(self.start("cmd-0"))
        self.driver.finish(APPROVED)
        self.journal._writer._conn.execute("PRAGMA query_only=ON")  # every later write fails
        view_d = self.start("cmd-1")
        self.assertEqual(self.error_code(view_d), "journal_unavailable")
        self.assertEqual(len(self.driver.sent), 1)
        self.successResultOf(self.start("cmd-2").addErrback(lambda f: None))
        self.assertEqual(len(self.driver.sent), 1)

    def test_a_driver_that_reports_success_without_sending_is_recorded_failed(self):
        self.driver.pay = lambda request, before_send: self._succeed(APPROVED)
        view = self.successResultOf(self.start())
        self.assertEqual(self.journal.get(view["id"]).state, "failed")

    def _succeed(self, value):
        from twisted.internet.defer import succeed

        return succeed(value)

    def test_a_driver_whose_payment_fails_after_sending_ends_unknown_never_approved(self):
        view = self.successResultOf(self.start())
        self.driver.runs[-1][1].errback(RuntimeError("a bug in the driver after the request left"))
        record = self.journal.get(view["id"])
        self.assertEqual((record.state, record.reason_code), ("unknown", "internal_error"))
        self.assertEqual(self.service.running(), 0)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_link_lost_after_sending_is_unknown(self):
        view = self.successResultOf(self.start())
        self.driver.finish(LINK_LOST)
        self.assertEqual(self.journal.get(view["id"]).state, "unknown")

    def test_recovery_fails_unsent_payments_and_marks_sent_ones_unknown(self):
        self.driver.connecting = True  # still connecting: nothing sent yet
        unsent = self.successResultOf(self.start("cmd-1"))
        other = RecordingDriver("till-2")
        self.service.registry = TerminalRegistry([self.driver, other])
        self.driver, self.other = other, self.driver
        sent = self.successResultOf(self.start("cmd-2", dict(ARGS, terminal="till-2")))
        self.assertEqual(len(other.sent), 1)
        # The bridge "crashes" here: a new service over the same journal file.
        restarted = self._service(self.journal)
        settled = self.successResultOf(restarted.recover())
        self.assertEqual({r.id: r.state for r in settled}, {unsent["id"]: "failed", sent["id"]: "unknown"})
        self.assertEqual(self.journal.get(sent["id"]).reason_code, "bridge_restarted")
        self.assertEqual(self.successResultOf(restarted.recover()), [])


class CancelResolveListPruneTests(PaymentServiceTests):
    def test_cancel_before_sending_is_certain_and_sends_nothing(self):
        self.driver.connecting = True  # the driver is still connecting to the terminal
        view = self.successResultOf(self.start())
        answer = self.successResultOf(self.service.cancel(view["id"], actor="cl_a"))
        self.assertEqual(answer["cancel"], "before_send")
        self.assertEqual(self.journal.get(view["id"]).state, "accepted")
        # The link comes up and the driver asks to send: the bridge refuses, the driver reports it.
        refusals = []
        self.service._running[view["id"]]  # the payment is still running
        before_send_refused = self._before_send_of(view["id"]).addErrback(lambda f: refusals.append(f.value.code))
        self.assertEqual(self.successResultOf(before_send_refused), None)
        self.assertEqual(refusals, ["cancelled_before_send"])
        self.driver.finish(Outcome("failed", "cancelled_before_send", "Not sent."))
        record = self.journal.get(view["id"])
        self.assertEqual((record.state, record.details["cancel_requested_by"]), ("cancelled", "cl_a"))
        self.assertEqual(self.driver.sent, [])

    def test_a_cancel_that_comes_while_in_progress_is_written_is_still_certain(self):
        """It was answered "before_send" (will not be sent) and the request was then sent all the same: the driver
        is let send only once in_progress is on disk and no cancel came meanwhile."""
        held = []
        real = self.journal.transition

        def transition(*args, **kwargs):
            d = Deferred()
            held.append((lambda: real(*args, **kwargs), d))
            return d

        self.journal.transition = transition
        view = self.successResultOf(self.start())
        self.assertEqual(len(held), 1)  # in_progress on its way to disk
        answer = self.successResultOf(self.service.cancel(view["id"], actor="cl_a"))
        self.assertEqual(answer["cancel"], "before_send")
        write, d = held.pop()
        write().chainDeferred(d)  # in_progress on disk: the cancel is still in time, nothing has left
        self.assertEqual(self.driver.sent, [])
        write, d = held.pop()  # the end the driver reported: not sent
        write().chainDeferred(d)
        record = self.journal.get(view["id"])
        self.assertEqual((record.state, record.reason_code), ("cancelled", "cancelled_before_send"))
        self.assertEqual([t["state"] for t in self.journal.transitions(view["id"])],
                         ["accepted", "in_progress", "cancelled"])

    def test_when_the_driver_was_let_send_is_known_to_the_final_events_listeners(self):
        seen = []
        self.service.subscribe(lambda e: seen.append((e.body["payment"]["state"],
                                                      self.service.sent_at(e.body["payment"]["id"]))))
        self.driver.connecting = True
        view = self.successResultOf(self.start())
        self.clock.advance(2)  # the connection takes two seconds
        self.successResultOf(self._before_send_of(view["id"]))
        let_send = self.clock.seconds()
        self.clock.advance(5)  # the customer takes five seconds
        self.driver.finish(APPROVED)
        self.assertEqual(seen, [("accepted", None), ("in_progress", None), ("approved", let_send)])
        self.assertIsNone(self.service.sent_at(view["id"]))  # ended: no longer running

    def test_a_payment_never_let_send_has_no_send_time(self):
        seen = []
        self.service.subscribe(lambda e: seen.append(self.service.sent_at(e.body["payment"]["id"])))
        self.driver.refuse_link = True
        self.successResultOf(self.start())
        self.assertEqual(seen, [None, None])  # accepted, failed

    def _before_send_of(self, payment_id):
        """Call the before_send hook the service gave the driver for this payment."""
        return self.driver.hooks[payment_id]()

    def test_cancel_after_sending_waits_for_the_terminal(self):
        view = self.successResultOf(self.start())
        answer = self.successResultOf(self.service.cancel(view["id"], actor="cl_a"))
        self.assertEqual(answer["cancel"], "on_terminal")
        self.assertEqual(self.journal.get(view["id"]).state, "in_progress")  # nothing claimed yet
        self.driver.finish(APPROVED)  # the customer was faster than the cashier
        self.assertEqual(self.journal.get(view["id"]).state, "approved")
        failure = self.failureResultOf(self.service.cancel(view["id"], actor="cl_a"), BridgeError)
        self.assertEqual(failure.value.code, "payment_final")

    def test_a_driver_with_a_cancel_is_asked(self):
        self.driver.cancel = lambda payment_id: "Press the red button."
        view = self.successResultOf(self.start())
        answer = self.successResultOf(self.service.cancel(view["id"], actor="cl_a"))
        self.assertEqual((answer["cancel"], answer["message"]), ("requested", "Press the red button."))

    def test_resolve_settles_only_unknown_payments_and_records_who(self):
        view = self.successResultOf(self.start())
        self.assertEqual(self.error_code(self.service.resolve(view["id"], "approved", "cl_boss", "receipt")),
                         "not_unknown")
        self.driver.finish(LINK_LOST)
        self.assertEqual(self.error_code(self.service.resolve(view["id"], "unknown", "cl_boss", "x")), "bad_request")
        self.assertEqual(self.error_code(self.service.resolve(view["id"], "approved", "cl_boss", " ")), "bad_request")
        resolved = self.successResultOf(self.service.resolve(view["id"], "approved", "cl_boss", "receipt 123456",
                                                             {"authorisation": "123456"}))
        self.assertEqual((resolved["state"], resolved["details"]["resolved_by"]), ("approved", "cl_boss"))
        self.assertEqual(self.journal.transitions(view["id"])[-1]["actor"], "cl_boss")
        self.assertEqual(self.error_code(self.service.resolve(view["id"], "declined", "cl_boss", "again")),
                         "not_unknown")

    def test_list_pages_through_a_clients_payments(self):
        ids = []
        for n in range(5):
            ids.append(self.successResultOf(self.start(f"c{n}"))["id"])
            self.driver.finish(DECLINED)
            self.clock.advance(1)
        self.successResultOf(self.start("other", client="cl_b"))
        page = self.service.list("cl_a", limit=3)
        self.assertEqual([p["id"] for p in page["payments"]], ids[::-1][:3])
        rest = self.service.list("cl_a", limit=3, cursor=page["next_cursor"])
        self.assertEqual([p["id"] for p in rest["payments"]], ids[::-1][3:])
        self.assertIsNone(rest["next_cursor"])
        self.assertEqual(len(self.service.list(None, limit=50)["payments"]), 6)
        self.assertEqual(self.service.list("cl_a", state="approved")["payments"], [])
        self.assertRaises(BridgeError, self.service.list, "cl_a", cursor="garbage")

    def test_prune_forgets_old_final_payments_but_never_unknown_ones(self):
        old_final = self.successResultOf(self.start("a"))
        self.driver.finish(DECLINED)
        old_unknown = self.successResultOf(self.start("b"))
        self.driver.finish(LINK_LOST)
        self.clock.advance(100 * 86400)
        recent = self.successResultOf(self.start("c"))
        self.driver.finish(APPROVED)
        removed = self.successResultOf(self.service.prune(90 * 86400))
        self.assertEqual(removed, 1)
        self.assertIsNone(self.journal.get(old_final["id"]))
        self.assertEqual(self.journal.transitions(old_final["id"]), [])
        self.assertIsNotNone(self.journal.get(old_unknown["id"]))
        self.assertIsNotNone(self.journal.get(recent["id"]))


class RefundAndProviderRecoveryTests(PaymentServiceTests):
    def approved(self, command_id="pay-1", amount=1234):
        view = self.successResultOf(self.start(command_id, dict(ARGS, amount=amount)))
        self.driver.finish(APPROVED)
        return view

    def refund(self, command_id, **args):
        return self.service.refund("cl_a", command_id, args)

    def test_a_refund_goes_to_the_terminal_with_the_original_payment(self):
        original = self.approved()
        refund = self.successResultOf(self.refund("r-1", payment_id=original["id"], amount=234))
        self.assertEqual((refund["kind"], refund["amount"], refund["details"]["refund_of"]),
                         ("refund", 234, original["id"]))
        request = self.driver.sent[-1]
        self.assertEqual((request.kind, request.amount, request.original["payment_id"]),
                         ("refund", 234, original["id"]))
        self.assertEqual(request.original["details"], {"authorisation": "123456"})

    def test_refunds_cannot_exceed_what_was_paid_and_repeat_idempotently(self):
        original = self.approved()
        self.successResultOf(self.refund("r-1", payment_id=original["id"], amount=1000))
        again = self.successResultOf(self.refund("r-1", payment_id=original["id"], amount=1000))
        self.assertEqual(len([r for r in self.driver.sent if r.kind == "refund"]), 1)
        self.driver.finish(APPROVED)
        self.assertEqual(self.error_code(self.refund("r-2", payment_id=original["id"], amount=235)),
                         "refund_too_large")
        self.successResultOf(self.refund("r-3", payment_id=original["id"], amount=234))
        self.assertEqual(again["id"], self.journal.get_by_command("cl_a", "r-1").id)

    def test_only_approved_debits_of_ones_own_can_be_refunded(self):
        view = self.successResultOf(self.start("d-1"))
        self.driver.finish(DECLINED)
        self.assertEqual(self.error_code(self.refund("r-1", payment_id=view["id"])), "not_refundable")
        self.assertEqual(self.error_code(self.refund("r-2", payment_id="pay_none")), "unknown_payment")
        approved = self.approved("d-2")
        self.assertEqual(self.error_code(self.service.refund("cl_b", "r-3", {"payment_id": approved["id"]})),
                         "unknown_payment")
        self.assertEqual(self.error_code(self.refund("r-4", payment_id=approved["id"], amount=0)), "invalid_amount")

    def test_recovery_asks_a_provider_that_can_tell(self):
        answers = {}
        self.driver.recover = lambda payment_id, details: answers.get(payment_id)
        sent = self.successResultOf(self.start("cmd-1"))
        answers[sent["id"]] = APPROVED
        restarted = self._service(self.journal)
        restarted.registry = TerminalRegistry([self.driver])
        settled = self.successResultOf(restarted.recover())
        self.assertEqual([(r.id, r.state) for r in settled], [(sent["id"], "approved")])

    def test_recovery_keeps_unknown_when_the_provider_cannot_say_or_fails(self):
        def broken(payment_id, details):
            raise RuntimeError("provider down")

        self.driver.recover = broken
        sent = self.successResultOf(self.start("cmd-1"))
        settled = self.successResultOf(self._service(self.journal).recover())
        self.assertEqual([r.state for r in settled], ["unknown"])
        self.flushLoggedErrors(RuntimeError)
        self.assertEqual(self.journal.get(sent["id"]).state, "unknown")

    def test_details_given_before_sending_are_journaled(self):
        self.driver.pay = lambda request, before_send: before_send({"payment_intent": "pi_1"}).addCallback(
            lambda _: Deferred())
        view = self.successResultOf(self.start())
        self.assertEqual(self.journal.get(view["id"]).details, {"payment_intent": "pi_1"})


class PayWhileAcceptingTests(SynchronousTestCase):
    """A driver that only connects before before_send (``pay_while_accepting``) is started while ``accepted`` is
    still to be journaled: when it is ready to send first, ``accepted`` and ``in_progress`` go to disk in one write;
    otherwise ``accepted`` is written alone after ACCEPTED_ALONE_AFTER or when the driver ends.  Nothing reaches
    the terminal before both states are on disk."""

    _service = PaymentServiceTests._service
    start = PaymentServiceTests.start
    error_code = PaymentServiceTests.error_code

    def setUp(self):
        PaymentServiceTests.setUp(self)
        self.driver.pay_while_accepting = True
        self.held = []  # (what was asked of the journal, the real write, the Deferred the service waits on)
        for name in ("create", "create_and_move"):
            self._hold(name)

    def _hold(self, name):
        real = getattr(self.journal, name)

        def held(*args, **kwargs):
            d = Deferred()
            self.held.append((name, lambda: real(*args, **kwargs), d))
            return d

        setattr(self.journal, name, held)

    def write(self, index=-1):
        _, write, d = self.held[index]
        write().chainDeferred(d)

    def refuse(self, index=-1):
        from twisted.python.failure import Failure

        self.held[index][2].errback(Failure(BridgeError("journal_unavailable", "The disk is full.")))

    def writes(self):
        return [name for name, _, _ in self.held]

    def test_a_driver_ready_to_send_has_accepted_and_in_progress_journaled_in_one_write(self):
        states_at_send = []
        original = self.driver.pay

        def pay(request, before_send):
            def spy():
                return before_send().addCallback(
                    lambda r: states_at_send.append(self.journal.get(request.payment_id).state) or r)
            return original(request, spy)

        self.driver.pay = pay
        view_d = self.start()
        self.assertEqual(len(self.driver.runs), 1)  # called at once, before anything is written
        self.assertEqual(self.writes(), ["create_and_move"])  # ready at once: one write for both states
        self.assertNoResult(view_d)
        self.assertEqual((self.driver.sent, self.events), ([], []))
        self.assertIsNone(self.journal.get_by_command("cl_a", "cmd-1"))
        self.assertEqual(self.service.running(), 1)  # one payment, though both being created and running
        self.write()
        view = self.successResultOf(view_d)
        self.assertEqual(view["state"], "accepted")  # the reply is the accepted payment, as for other drivers
        self.assertEqual(states_at_send, ["in_progress"])
        self.assertEqual([t["state"] for t in self.journal.transitions(view["id"])], ["accepted", "in_progress"])
        self.assertEqual(len(self.driver.sent), 1)
        self.clock.advance(1)  # nothing more is written when the wait for the driver would have ended
        self.assertEqual(self.writes(), ["create_and_move"])
        self.driver.finish(APPROVED)
        self.assertEqual([state for _, state in self.events], ["accepted", "in_progress", "approved"])
        self.assertEqual([seq for seq, _ in self.events], sorted(seq for seq, _ in self.events))
        self.assertEqual(self.journal.get(view["id"]).state, "approved")
        self.assertEqual(self.service.running(), 0)

    def test_the_driver_sends_before_the_client_is_told_and_an_end_it_reports_at_once_is_told_last(self):
        order = []
        self.service.subscribe(lambda e: order.append(e.body["payment"]["state"]))

        def pay(request, before_send):  # the link drops as the request would go: the driver ends at once
            return before_send().addCallback(
                lambda _: order.append("sent") or Outcome("failed", "terminal_unreachable", "Lost."))

        self.driver.pay = pay
        view_d = self.start()
        self.write()
        view = self.successResultOf(view_d)
        self.assertEqual(order, ["sent", "accepted", "in_progress", "failed"])
        self.assertEqual([seq for seq, _ in self.events], sorted(seq for seq, _ in self.events))
        self.assertEqual(self.journal.get(view["id"]).state, "failed")
        self.assertEqual(self.service.running(), 0)

    def test_accepted_is_written_alone_when_the_driver_is_not_ready_in_time(self):
        from bridge.core.payments import ACCEPTED_ALONE_AFTER

        self.driver.connecting = True  # the terminal's connection is still being made
        view_d = self.start()
        self.clock.advance(ACCEPTED_ALONE_AFTER * 0.9)
        self.assertEqual(self.writes(), [])
        self.assertNoResult(view_d)
        self.clock.advance(ACCEPTED_ALONE_AFTER * 0.2)
        self.assertEqual(self.writes(), ["create"])  # the client need not wait for the terminal's connection
        self.write()
        view = self.successResultOf(view_d)
        self.assertEqual([state for _, state in self.events], ["accepted"])
        # the connection comes up: in_progress is journaled on its own, and only then may the driver send
        sent = self.driver.hooks[view["id"]]()
        self.assertEqual(self.successResultOf(sent).state, "in_progress")
        self.assertEqual(self.journal.get(view["id"]).state, "in_progress")
        self.assertEqual([state for _, state in self.events], ["accepted", "in_progress"])

    def test_a_driver_ready_while_accepted_is_written_alone_waits_for_it(self):
        from bridge.core.payments import ACCEPTED_ALONE_AFTER

        self.driver.connecting = True
        view_d = self.start()
        self.clock.advance(ACCEPTED_ALONE_AFTER)
        payment_id = self.driver.runs[0][0].payment_id
        sent = self.driver.hooks[payment_id]()  # ready while accepted is on its way to disk
        self.assertNoResult(sent)
        self.assertEqual(self.writes(), ["create"])
        self.write()
        self.successResultOf(view_d)
        self.assertEqual(self.successResultOf(sent).state, "in_progress")
        self.assertEqual([state for _, state in self.events], ["accepted", "in_progress"])

    def test_nothing_is_sent_nor_journaled_when_accepted_cannot_be_written(self):
        view_d = self.start()
        self.refuse()
        self.assertEqual(self.error_code(view_d), "journal_unavailable")
        self.assertEqual((self.driver.sent, self.events), ([], []))
        self.assertEqual(self.journal.list(), [])
        self.assertEqual(self.service.running(), 0)
        # the terminal is free again, and the next payment goes through
        second = self.start("cmd-2")
        self.write()
        self.successResultOf(second)
        self.assertEqual(len(self.driver.sent), 1)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_nothing_is_sent_when_accepted_written_alone_fails(self):
        from bridge.core.payments import ACCEPTED_ALONE_AFTER

        self.driver.connecting = True
        view_d = self.start()
        self.clock.advance(ACCEPTED_ALONE_AFTER)
        self.refuse()
        self.assertEqual(self.error_code(view_d), "journal_unavailable")
        payment_id = self.driver.runs[0][0].payment_id
        self.failureResultOf(self.driver.hooks[payment_id](), BridgeError)  # the driver is told not to send
        self.assertEqual((self.journal.list(), self.events), ([], []))

    def test_a_driver_that_ends_before_accepted_is_on_disk_is_journaled_after_it(self):
        self.driver.refuse_link = True  # the terminal refuses the connection at once
        view_d = self.start()
        self.assertEqual(self.writes(), ["create"])  # written at once: there is nothing to wait for
        self.assertEqual(self.events, [])  # the end waits for accepted
        self.write()
        view = self.successResultOf(view_d)
        record = self.journal.get(view["id"])
        self.assertEqual((record.state, record.reason_code), ("failed", "terminal_unreachable"))
        self.assertEqual([state for _, state in self.events], ["accepted", "failed"])
        self.assertEqual(self.service.running(), 0)

    def test_a_driver_that_ends_early_journals_nothing_when_accepted_cannot_be_written(self):
        self.driver.refuse_link = True
        view_d = self.start()
        self.refuse()
        self.assertEqual(self.error_code(view_d), "journal_unavailable")
        self.assertEqual((self.journal.list(), self.events), ([], []))
        self.assertEqual(self.service.running(), 0)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_a_stopping_bridge_waits_for_a_payment_whose_accepted_waits_for_its_driver(self):
        from bridge.core.payments import ACCEPTED_ALONE_AFTER

        self.driver.connecting = True
        view_d = self.start()
        self.service.stop_taking()
        idle = self.service.wait_idle()
        self.clock.advance(ACCEPTED_ALONE_AFTER)
        self.write()
        view = self.successResultOf(view_d)
        self.assertNoResult(idle)  # still running: its driver has not ended
        self.driver.finish(Outcome("failed", "terminal_unreachable", "The terminal could not be reached."))
        self.successResultOf(idle)
        self.assertEqual((self.service.running(), self.journal.get(view["id"]).state), (0, "failed"))

    def test_a_driver_that_raises_ends_the_payment_failed_and_frees_the_terminal(self):
        def broken(request, before_send):
            raise RuntimeError("a bug in the driver")

        self.driver.pay = broken
        view_d = self.start()
        self.write()
        view = self.successResultOf(view_d)
        record = self.journal.get(view["id"])
        self.assertEqual((record.state, record.reason_code), ("failed", "internal_error"))
        self.assertEqual(self.service.running(), 0)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_other_drivers_are_started_only_once_accepted_is_on_disk(self):
        self.driver.pay_while_accepting = False
        view_d = self.start()
        self.assertEqual(self.driver.runs, [])
        self.write()
        self.successResultOf(view_d)
        self.assertEqual(len(self.driver.runs), 1)
