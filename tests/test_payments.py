import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from bridge.core.journal import Journal
from bridge.core.payments import PaymentService
from bridge.core.registry import TerminalRegistry
from bridge.errors import BridgeError
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
        self.assertEqual(self.error_code(self.start(client="cl_b")), "idempotency_mismatch")
        self.assertEqual(len(self.driver.sent), 1)

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
