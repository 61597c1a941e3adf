"""The POS round trip benchmark (bench/pos_roundtrip.py runs it; not part of the normal tests).

50 payments from the POS in headless Chromium through real Odoo, the real daemon and a simulated Caisse-AP
terminal answering at once, all on loopback. For each payment:

* click -> terminal: the cashier's click on the payment method (the browser's clock) to the terminal receiving the
  request (a thread watching the simulator's record file, one line per request, every millisecond);
* terminal -> POS: the terminal's answer (the same moment: it answers at once) to the POS line showing
  "Payment Successful" (the browser's clock).

Both clocks are this machine's. The figures are logged on a ``TBBENCH-RESULT`` line.
"""

import json
import logging
import os
import statistics
import threading
import time

from odoo.tests import tagged

from odoo.addons.terminal_bridge.tests import bridge_process

from .test_tours import METHODS, TerminalBridgeTourCase

_logger = logging.getLogger(__name__)

bridge_process.OUTCOMES.setdefault("instant", ["--outcome", "approve"])
METHODS.setdefault("Card instant", ("till-fast", "instant"))


class _Console(logging.Handler):
    """Keeps the browser's TBBENCH console line (the tour's browser logs under this module's logger)."""

    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        message = record.getMessage()
        if "TBBENCH " in message:
            self.lines.append(message[message.index("TBBENCH ") + 8:])


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


@tagged("post_install", "-at_install", "-standard", "pos_terminal_bridge_bench")
class TestPosRoundTrip(TerminalBridgeTourCase):

    def test_pos_round_trip(self):
        self.main_pos_config.auto_validate_terminal_payment = False  # the line shows "Payment Successful"
        self.start_bench("Card instant")
        record = self.bench._record_path("till-fast")
        arrivals, stop = [], threading.Event()

        def watch():
            seen = 0
            while not stop.is_set():
                try:
                    with open(record, "rb") as f:
                        count = f.read().count(b"\n")
                except FileNotFoundError:
                    count = 0
                now = time.time()
                arrivals.extend([now] * (count - seen))
                seen = count
                time.sleep(0.001)

        watcher = threading.Thread(target=watch, daemon=True)
        console = _Console()
        logger = logging.getLogger("odoo.addons.pos_terminal_bridge")
        logger.addHandler(console)
        watcher.start()
        try:
            self.tour("TerminalBridgeBench", timeout=1200)
        finally:
            stop.set()
            watcher.join()
            logger.removeHandler(console)
        times = json.loads(console.lines[-1])
        self.assertEqual(len(times), len(arrivals), "one terminal request per click")
        to_terminal = [arrival * 1000 - t["click"] for t, arrival in zip(times, arrivals)]
        to_pos = [t["shown"] - arrival * 1000 for t, arrival in zip(times, arrivals)]
        result = {
            "payments": len(times),
            "click_to_terminal_ms": {"p50": round(percentile(to_terminal, 0.5), 1),
                                     "p99": round(percentile(to_terminal, 0.99), 1),
                                     "mean": round(statistics.mean(to_terminal), 1)},
            "terminal_to_pos_ms": {"p50": round(percentile(to_pos, 0.5), 1),
                                   "p99": round(percentile(to_pos, 0.99), 1),
                                   "mean": round(statistics.mean(to_pos), 1)},
            "cpus": os.cpu_count(),
        }
        _logger.info("TBBENCH-RESULT %s", json.dumps(result))
        self.assertEqual(self.payments().mapped("state"), ["approved"] * len(times))
