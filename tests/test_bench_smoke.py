"""`make bench` still runs: bench/bench.py --quick end to end, checking that every figure is printed.

No timing is asserted here (the figures of a smoke run on a busy test machine mean nothing); the targets are
checked by `make bench` itself and recorded in docs/performance.md.
"""

import json
import os
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench", "bench.py")

FIGURES = [
    "1 terminal: direct round trip p50",
    "1 terminal: direct round trip p99",
    "1 terminal: through the bridge p50",
    "1 terminal: through the bridge p99",
    "1 terminal: added latency p50",
    "1 terminal: added latency p99",
    "50 terminals at once: direct round trip p50",
    "50 terminals at once: direct round trip p99",
    "50 terminals at once: through the bridge p50",
    "50 terminals at once: through the bridge p99",
    "50 terminals at once: added latency p50",
    "50 terminals at once: added latency p99",
    "floor: bare TLS WebSocket round trip p50",
    "floor: fsync of the journal's disk p50",
    "throughput: payments per second",
    "bridge resident memory after load",
    "start to ready, first start (new TLS key)",
    "start to ready, second start",
    "start to first TCP accept, first start",
    "start to first TCP accept, second start",
    "floor of the 1-terminal added latency (p50)",
    "floor measured apart (echo phase, append+fsync)",
]

#: Figures with a target get a PASS or MISS verdict on their line (issue 18's targets; resident memory's is
#: against the libraries-only process, on a line of its own).
WITH_TARGET = [FIGURES[i] for i in (4, 5, 11, 14, 16, 17)]


class BenchSmokeTest(unittest.TestCase):
    def test_quick_run_prints_every_figure(self):
        env = dict(os.environ)
        env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        with tempfile.TemporaryDirectory() as tmp:
            figures_path = os.path.join(tmp, "figures.json")
            proc = subprocess.run([sys.executable, BENCH, "--quick", "--json", figures_path],
                                  cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  timeout=120, universal_newlines=True)
            self.assertEqual(proc.returncode, 0, f"bench failed:\n{proc.stdout}\n{proc.stderr}")
            lines = proc.stdout.splitlines()
            for label in FIGURES:
                matching = [line for line in lines if line.startswith(label + " ")]
                self.assertEqual(len(matching), 1, f"no line for {label!r} in:\n{proc.stdout}")
                if label in WITH_TARGET:
                    self.assertRegex(matching[0], r" (PASS|MISS)$")
            self.assertIn("journal check:", proc.stdout)
            self.assertIn("floor of the 1-terminal added latency on this machine:", proc.stdout)
            # the own work against the 2 fsyncs a Caisse-AP TCP payment waits for, beside the floor of 3
            self.assertRegex(proc.stdout, r"against a floor of 2 its own work is -?\d+\.\d{3} ms at p50")
            self.assertRegex(proc.stdout, r"1 terminal: added latency p50 .*<= floor \+ 1\.0 ms +(PASS|MISS)\n")
            self.assertRegex(proc.stdout, r"over a libraries-only process .*\(target <= 10 MB\) (PASS|MISS)")
            with open(figures_path, encoding="utf-8") as f:
                figures = json.load(f)["figures"]
            self.assertGreater(figures["throughput_payments"], 0)
            self.assertGreater(figures["rss"], 0)
            self.assertGreater(figures["echo_p50"], 0)
            # the floor the targets are judged against is sampled between the 1-terminal payments: one echo round
            # trip and one fsync after each (the floor measured apart is shown beside it)
            self.assertEqual(figures["floor_n_1"], figures["bridge_n_1"])
            # with two CPUs or more the bridge has the last to itself; the measuring client and simulators the rest
            self.assertRegex(proc.stdout, r"\nCPUs: ")
            allowed = os.sched_getaffinity(0)
            if len(allowed) > 1:
                self.assertEqual(figures["bridge_cpus"], [max(allowed)])
            self.assertAlmostEqual(figures["floor_ms"],
                                   figures["floor_echo_p50_1"] + 3 * figures["floor_fsync_p50_1"], places=9)
            # the bridge ran with the environment the systemd unit sets (read from its /proc/PID/environ); the
            # .deb's build runs the tests on a copy without the unit file: then without, and the report says so
            unit_path = os.path.join(ROOT, "systemd", "terminal-bridge.service")
            if os.path.exists(unit_path):
                with open(unit_path, encoding="utf-8") as f:
                    unit = dict(line.strip().partition("=")[2].partition("=")[::2] for line in f
                                if line.startswith("Environment="))
                self.assertEqual(unit, {"MALLOC_ARENA_MAX": "1"})
                self.assertEqual(figures["unit_environment"], unit)
            else:
                self.assertIsNone(figures["unit_environment"])
                self.assertIn("the bridge ran without the unit's environment", proc.stdout)
            # the libraries-only baseline imports what the bridge imported while running: `python -m bridge`
            # imports runpy, which the first process of bench/baseline.py (python -c) never does
            self.assertIn("runpy", figures["libraries_modules_seen_running"])
            # the status page phase: payments with the page closed, then open and refreshing
            self.assertIn("status page (a third start, [status] on;", proc.stdout)
            self.assertGreater(figures["status_closed_n"], 0)
            self.assertGreater(figures["status_open_n"], 0)
            self.assertGreater(figures["status_pages"], 0)


if __name__ == "__main__":
    unittest.main()
