#!/usr/bin/env python3
"""The POS round trip through real Odoo: click -> terminal and terminal -> POS, p50 and p99 over 50 payments.

Runs pos_terminal_bridge's benchmark test (tests/test_bench.py, tag ``pos_terminal_bridge_bench``) under Odoo's
own runner through scripts/test-odoo.sh: headless Chromium drives the POS, the real bridge daemon (paired through
/terminal_bridge/pair, behind a TLS front) pays on a simulated Caisse-AP terminal that answers at once, all on
127.0.0.1. Prints one line per Odoo version, the targets (150 ms at p50, 400 ms at p99) and the machine's load
average before and after (figures on a shared machine mean little without it).

    bench/pos_roundtrip.py                 # Odoo 19.0 and 18.0 (whichever trees exist)
    ODOO_VERSIONS=19.0 bench/pos_roundtrip.py
"""

import json
import os
import re
import subprocess
import sys
import tempfile

TARGETS = {"p50": 150.0, "p99": 400.0}


def main() -> int:
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
            lines = [line for line in f if "TBBENCH-RESULT " in line]
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
    load_after = os.getloadavg()
    print(f"targets: p50 <= {TARGETS['p50']:.0f} ms, p99 <= {TARGETS['p99']:.0f} ms; load average (1, 5, 15 min) "
          f"before {', '.join(f'{x:.2f}' for x in load_before)}, after {', '.join(f'{x:.2f}' for x in load_after)}; "
          f"logs in {log_dir}")
    return 0 if found and run.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
