"""bench/pos_served.py's figures: the legs of each payment, nearest-rank percentiles, PASS or MISS per target.

Only the pure pieces (the run itself needs Odoo, PostgreSQL and Chromium, and measures rather than checks)."""

import importlib.util
import os
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SPEC = importlib.util.spec_from_file_location("pos_served", os.path.join(ROOT, "bench", "pos_served.py"))
pos_served = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(pos_served)


class FiguresTests(unittest.TestCase):
    def test_legs_split_each_payment_at_the_terminal(self) -> None:
        times = [{"click": 1000.0, "shown": 1300.0}, {"click": 5000.0, "shown": 5090.0}]
        arrivals = [1.1, 5.05]  # s: the terminal's clock is the same machine's, in seconds
        to_terminal, to_pos = pos_served.legs(times, arrivals)
        self.assertEqual([round(x, 1) for x in to_terminal], [100.0, 50.0])
        self.assertEqual([round(x, 1) for x in to_pos], [200.0, 40.0])

    def test_legs_refuse_a_missing_terminal_request(self) -> None:
        with self.assertRaises(ValueError):
            pos_served.legs([{"click": 1.0, "shown": 2.0}] * 2, [0.001])

    def test_percentiles_are_nearest_rank(self) -> None:
        values = list(range(1, 51))  # 50 payments: p99 is the slowest, p50 the 25th (rank 24.5 rounds to 24, from 0)
        self.assertEqual(pos_served.percentile(values, 0.99), 50)
        self.assertEqual(pos_served.percentile(values, 0.5), 25)
        self.assertEqual(pos_served.percentile(values, 0.9), 45)
        self.assertEqual(pos_served.figures(values), {"p50": 25, "p90": 45, "p99": 50, "mean": 25.5})

    def test_a_target_met_exactly_passes_and_a_hair_over_misses(self) -> None:
        self.assertEqual(pos_served.verdicts({"p50": 150.0, "p99": 400.0}), {"p50": "PASS", "p99": "PASS"})
        self.assertEqual(pos_served.verdicts({"p50": 150.1, "p99": 400.1}), {"p50": "MISS", "p99": "MISS"})
        line = pos_served.report_line("click -> terminal", {"p50": 163.0, "p90": 200.0, "p99": 399.0, "mean": 1.0})
        self.assertIn("p50 163.0 ms MISS", line)
        self.assertIn("p99 399.0 ms PASS", line)

    def test_request_times_add_sql_and_the_rest_of_each_request(self) -> None:
        log = [
            '2026-12-07 00:38:15,622 3207 INFO db werkzeug: 127.0.0.1 - - [07/Dec/2026 00:38:15] "POST '
            '/web/dataset/call_kw/pos.payment.method/tb_send_payment#x HTTP/1.1" 200 - 18 0.065 0.041',
            '2026-12-07 00:38:15,672 3207 INFO db werkzeug: 127.0.0.1 - - [07/Dec/2026 00:38:15] "POST '
            '/terminal_bridge/pending HTTP/1.1" 200 - 9 0.010 0.009',
            '2026-12-07 00:38:15,673 3207 INFO db werkzeug: 127.0.0.1 - - [07/Dec/2026 00:38:15] "POST '
            '/terminal_bridge/pending HTTP/1.1" 200 - 9 0.100 0.200',
            "2026-12-07 00:38:15,700 3207 INFO db odoo.addons.x: /terminal_bridge/pending 0.5 0.5",
        ]
        times = pos_served.request_times(log)
        self.assertEqual(times["tb_send_payment"], {"count": 1, "p50": 106, "p90": 106, "max": 106})
        self.assertEqual(times["/pending"], {"count": 2, "p50": 19, "p90": 300, "max": 300})
        self.assertNotIn("/ack", times)


if __name__ == "__main__":
    unittest.main()
