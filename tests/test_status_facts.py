"""What the status page and the metrics read from the journal (bridge/status/facts.py), on a real journal."""

import os

from twisted.trial.unittest import SynchronousTestCase

from bridge.core import states
from bridge.core.journal import Journal, PaymentRecord
from bridge.status import facts


def unknown(n: int) -> PaymentRecord:
    return PaymentRecord(id=f"pay_{n:03d}", command_id=f"cmd_{n}", client_id="cl_a", terminal="till-1",
                         kind="debit", method="card", amount=1234, currency="EUR", args_digest="d",
                         state=states.UNKNOWN, created=1000.0 + n, updated=1000.0 + n)


class UnknownPaymentsTests(SynchronousTestCase):
    def setUp(self):
        self.journal = Journal.open(os.path.join(self.mktemp(), "journal.sqlite3"), threaded=False)
        self.addCleanup(self.journal.close)

    def add(self, first: int, last: int) -> None:
        for n in range(first, last + 1):
            self.successResultOf(self.journal.create(unknown(n), {}, actor="cl_a"))

    def test_a_few_are_all_shown_oldest_first(self):
        self.add(1, 3)
        self.assertEqual(facts.unknown_payments(self.journal),
                         facts.UnknownPayments([unknown(n) for n in (1, 2, 3)], 3))

    def test_past_the_limit_the_longest_waiting_are_the_ones_shown(self):
        # more than a page (and more than two) wait: the page and the metrics' oldest age must still see the
        # oldest, which the journal lists last
        self.add(1, 2 * facts.UNKNOWN_LIMIT + 7)
        shown, count = facts.unknown_payments(self.journal)
        self.assertEqual(len(shown), facts.UNKNOWN_LIMIT)
        self.assertEqual(count, 2 * facts.UNKNOWN_LIMIT + 7)
        self.assertEqual([r.id for r in shown], [f"pay_{n:03d}" for n in range(1, facts.UNKNOWN_LIMIT + 1)])

    def test_exactly_the_limit(self):
        self.add(1, facts.UNKNOWN_LIMIT)
        shown, count = facts.unknown_payments(self.journal)
        self.assertEqual([r.id for r in shown], [f"pay_{n:03d}" for n in range(1, facts.UNKNOWN_LIMIT + 1)])
        self.assertEqual(count, facts.UNKNOWN_LIMIT)
