"""The POS round trip benchmark (bench/pos_roundtrip.py runs it; not part of the normal tests).

50 payments from the POS in headless Chromium through real Odoo, the real daemon and a simulated Caisse-AP
terminal answering at once, all on loopback. For each payment:

* click -> terminal: the cashier's click on the payment method (the browser's clock) to the terminal receiving the
  request (a thread watching the simulator's record file, one line per request, every millisecond);
* terminal -> POS: the terminal's answer (the same moment: it answers at once) to the POS line showing
  "Payment Successful" (the browser's clock, taken by a MutationObserver at the change of the page: the tour
  engine itself looks again later, on 18.0 only after the page was still for 500 ms).

Both clocks are this machine's. The figures are logged on a ``TBBENCH-RESULT`` line.

The bus, on both versions. Odoo's test runner keeps every request inside one transaction that never commits (its
TestCursor), and a cursor that does not commit drops its post-commit hooks: Odoo's bus sends its notifications
(``NOTIFY imbus``) in one of those, so none would ever leave. And while a test runs, Odoo refuses the bus's
WebSocket (``WebsocketConnectionHandler.websocket_allowed`` is false, /websocket answers 503). Odoo 19's own
HttpCase undoes both for the length of a tour (``browser_js``: the WebSocket allowed, and each ``_sendone`` runs
the cursor's pre- and post-commit hooks at once, i.e. writes the bus row and sends the NOTIFY); Odoo 18's does
neither, so the box and the POS would only learn anything from their fallbacks (the box's periodic fetch, the
POS's poll). :func:`bus_as_served` does on 18.0 what 19.0's runner does, for this benchmark only: the product's
code is unchanged, the bus row is written and the NOTIFY sent by Odoo's own hooks, and the WebSocket readers wait
for the request's cursor like any other reader under the test lock.
"""

import contextlib
import json
import logging
import os
import statistics
import threading
import time

from odoo import release
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


@contextlib.contextmanager
def bus_as_served():
    """On Odoo 18.0, what Odoo 19.0's HttpCase does for a tour (see the module's docstring); nothing on 19.0+."""
    if release.version_info[0] >= 19:
        yield
        return
    from unittest.mock import patch  # pylint: disable=import-outside-toplevel

    from odoo.addons.bus.models.bus import ImBus  # pylint: disable=import-outside-toplevel
    from odoo.addons.bus.websocket import WebsocketConnectionHandler  # pylint: disable=import-outside-toplevel

    original = ImBus._sendone

    def sendone(self, target, notification_type, message):
        original(self, target, notification_type, message)
        self.env.cr.precommit.run()  # the bus.bus rows, as at commit
        self.env.cr.postcommit.run()  # NOTIFY imbus, as after commit

    # The WebSockets still open at the end close with the daemon (the test's cleanup) and the browser.
    with patch.object(ImBus, "_sendone", sendone), \
            patch.object(WebsocketConnectionHandler, "websocket_allowed", return_value=True):
        yield


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
            seen, size = 0, 0
            while not stop.is_set():
                try:
                    grown = os.stat(record).st_size != size  # cheap: the file is read only when it grew
                    if grown:
                        with open(record, "rb") as f:
                            data = f.read()
                        size, count = len(data), data.count(b"\n")
                except FileNotFoundError:
                    grown = False
                if grown:
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
            with bus_as_served():
                self.tour("TerminalBridgeBench", timeout=1200)
                daemon_log = self.bench.daemon.output()  # before the WebSockets are closed
        finally:
            stop.set()
            watcher.join()
            logger.removeHandler(console)
        if os.environ.get("ODOO_LOG_DIR"):  # bench/pos_roundtrip.py keeps the box's log beside Odoo's
            with open(os.path.join(os.environ["ODOO_LOG_DIR"], f"daemon-{release.series}.log"), "w",
                      encoding="utf-8") as f:
                f.write(daemon_log)
        times = json.loads(console.lines[-1])
        self.assertEqual(len(times), len(arrivals), "one terminal request per click")
        to_terminal = [arrival * 1000 - t["click"] for t, arrival in zip(times, arrivals)]
        to_pos = [t["shown"] - arrival * 1000 for t, arrival in zip(times, arrivals)]
        result = {
            "payments": len(times),
            "click_to_terminal_ms": {"p50": round(percentile(to_terminal, 0.5), 1),
                                     "p90": round(percentile(to_terminal, 0.9), 1),
                                     "p99": round(percentile(to_terminal, 0.99), 1),
                                     "mean": round(statistics.mean(to_terminal), 1)},
            "terminal_to_pos_ms": {"p50": round(percentile(to_pos, 0.5), 1),
                                   "p90": round(percentile(to_pos, 0.9), 1),
                                   "p99": round(percentile(to_pos, 0.99), 1),
                                   "mean": round(statistics.mean(to_pos), 1)},
            "cpus": os.cpu_count(),
            # Whether the box was woken by the bus (connected, not ended) or by its 1 s periodic fetch.
            "box_bus": {"connected": daemon_log.count("bus connected"), "ended": daemon_log.count("bus link ended")},
        }
        _logger.info("TBBENCH-RESULT %s", json.dumps(result))
        self.assertEqual(self.payments().mapped("state"), ["approved"] * len(times))
