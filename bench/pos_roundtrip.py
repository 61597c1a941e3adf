#!/usr/bin/env python3
"""The POS round trip through real Odoo: click -> terminal and terminal -> POS, p50 and p99 over 50 payments.

Runs pos_terminal_bridge's benchmark test (tests/test_bench.py, tag ``pos_terminal_bridge_bench``) under Odoo's
own runner through scripts/test-odoo.sh: headless Chromium drives the POS, the real bridge daemon (paired through
/terminal_bridge/pair, behind a TLS front) pays on a simulated Caisse-AP terminal that answers at once, all on
127.0.0.1. Prints one line per Odoo version, the targets (150 ms at p50, 400 ms at p99) and the machine's load
average before and after (figures on a shared machine mean little without it).

    bench/pos_roundtrip.py                 # Odoo 19.0 and 18.0 (whichever trees exist)
    ODOO_VERSIONS=19.0 bench/pos_roundtrip.py
    bench/pos_roundtrip.py LOG             # where the time went in an earlier run's Odoo log

The same round trip against a served odoo-bin (threaded, requests side by side): bench/pos_served.py.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import time

TARGETS = {"p50": 150.0, "p99": 400.0}
#: The requests of one payment, in the order they end, as Odoo's request log names them.
STEPS = (("tb_send_payment", "/pos.payment.method/tb_send_payment"), ("/pending", "/terminal_bridge/pending "),
         ("/ack", "/terminal_bridge/ack "), ("/feedback", "/terminal_bridge/feedback "))
_LOGGED = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")


def _ms(line: str):
    """The time of an Odoo log line, in ms since the epoch (Odoo logs the machine's local time)."""
    match = _LOGGED.match(line)
    if not match:
        return None
    return time.mktime(time.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")) * 1000 + int(match.group(2))


def where_the_time_goes(lines: list) -> str:
    """The median time from the click to the end of each request of the payment (Odoo's request log, ms
    resolution), and to the POS showing the result: one line of words."""
    clicks = None
    for line in lines:
        if "TBBENCH [" in line:
            clicks = json.loads(line.split("TBBENCH ", 1)[1])
    if not clicks:
        return "no per-payment times in the log"
    ends = [(t, name) for line in lines if "werkzeug" in line and (t := _ms(line)) is not None
            for name, words in STEPS if words in line]
    offsets: dict = {name: [] for name, _ in STEPS}
    offsets["shown"] = []
    for i, times in enumerate(clicks):
        start = times["click"]
        stop = clicks[i + 1]["click"] if i + 1 < len(clicks) else float("inf")
        after = start
        for name, _ in STEPS:  # each the first of its kind after the previous one
            found = next((t for t, n in ends if n == name and after <= t < stop), None)
            if found is None:
                break
            offsets[name].append(found - start)
            after = found
        offsets["shown"].append(times["shown"] - start)
    parts = [f"{name} {sorted(v)[len(v) // 2]:.0f}" for name, v in offsets.items() if v]
    return "median ms from the click to the end of: " + ", ".join(parts)


def main() -> int:
    if len(sys.argv) == 2 and os.path.isfile(sys.argv[1]):  # an earlier run's Odoo log: its analysis only
        with open(sys.argv[1], encoding="utf-8", errors="replace") as f:
            print(where_the_time_goes(f.readlines()))
        return 0
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    log_dir = tempfile.mkdtemp(prefix="pos-roundtrip-")
    env = dict(os.environ, ODOO_TEST_TAGS="pos_terminal_bridge_bench", ODOO_LOG_DIR=log_dir)
    env.setdefault("ODOO_E2E", "0")  # the end-to-end script measures nothing here
    load_before = os.getloadavg()
    run = subprocess.run([os.path.join(repo, "scripts", "test-odoo.sh")], env=env, check=False)
    found = False
    for name in sorted(os.listdir(log_dir)):
        match = re.fullmatch(r"odoo-(.+)\.log", name)
        if not match:
            continue
        with open(os.path.join(log_dir, name), encoding="utf-8", errors="replace") as f:
            log = f.readlines()
        lines = [line for line in log if "TBBENCH-RESULT " in line]
        if not lines:
            print(f"Odoo {match.group(1)}: no result (see {log_dir}/{name})")
            continue
        found = True
        result = json.loads(lines[-1].split("TBBENCH-RESULT ", 1)[1])
        parts = []
        for key, words in (("click_to_terminal_ms", "click -> terminal"), ("terminal_to_pos_ms", "terminal -> POS")):
            figures = result[key]
            verdicts = ["PASS" if figures[k] <= TARGETS[k] else "MISS" for k in ("p50", "p99")]
            parts.append(f"{words}: p50 {figures['p50']} ms ({verdicts[0]}), p99 {figures['p99']} ms ({verdicts[1]})")
        bus = result.get("box_bus")
        how = f"; the box's bus: {bus}" if bus else ""
        print(f"Odoo {match.group(1)}, {result['payments']} payments: " + "; ".join(parts) + how)
        print(f"Odoo {match.group(1)}: {where_the_time_goes(log)}")
    load_after = os.getloadavg()
    print(f"targets: p50 <= {TARGETS['p50']:.0f} ms, p99 <= {TARGETS['p99']:.0f} ms; load average (1, 5, 15 min) "
          f"before {', '.join(f'{x:.2f}' for x in load_before)}, after {', '.join(f'{x:.2f}' for x in load_after)}; "
          f"logs in {log_dir}")
    return 0 if found and run.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
