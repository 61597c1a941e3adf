#!/usr/bin/python3
"""The POS round trip against a served odoo-bin: click -> terminal and terminal -> POS over N payments.

bench/pos_roundtrip.py measures the round trip under Odoo's test runner, which serves one request at a time (its
test cursor's lock). This one measures it as a small shop runs Odoo: ``odoo-bin --workers=0`` (threaded, requests
served side by side, ``/websocket`` on the HTTP port) on its own PostgreSQL 15 cluster, one database with
pos_terminal_bridge installed by ``odoo-bin -i``, the real bridge daemon paired with it through a TLS front
(``terminal-bridge uplink pair``), a simulated Caisse-AP terminal that answers at once, and the POS in headless
Chromium driven over DevTools (odoo_addons/e2e/: odoo_e2e.py, pos_page.py), all on 127.0.0.1.

Timed as in pos_terminal_bridge's tests/test_bench.py: click -> terminal is the browser's ``Date.now()`` at the
click on the payment method to the moment the terminal's request appears in the simulator's record file (a thread
watches it every millisecond); terminal -> POS is that moment to the browser's ``Date.now()`` when the payment line
says *Payment Successful* (a MutationObserver). Prints p50/p90/p99 of both legs, PASS or MISS per target (150 ms at
p50, 400 ms at p99), the load average before, during (sampled every 10 s) and after, and stops everything it
started, also on failure or Ctrl-C.

    bench/pos_served.py --version 19.0 [--payments 50] [--odoo-src /opt/odoo-src/19.0] [--keep]
"""
# A command-line benchmark: its output is its report.

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
E2E = os.path.join(REPO, "odoo_addons", "e2e")
PGBIN = "/usr/lib/postgresql/15/bin"
TARGETS = {"p50": 150.0, "p99": 400.0}
TERMINAL = "till-fast"
METHOD = "Card instant"
PRODUCT = "Desk Pad"

# Clicks the payment method the way test_bench's tour does, with a MutationObserver noting when the line shows
# "Payment Successful" (the page's change itself, not the moment a poller looks).
CLICK_JS = """(() => {
    const entry = { click: Date.now() };
    window.tbServed = entry;
    const shown = () => [...document.querySelectorAll(".paymentline .electronic_status")].some(
        (el) => el.textContent.includes("Payment Successful"));
    entry.observer = new MutationObserver(() => {
        if (!entry.shown && shown()) { entry.shown = Date.now(); entry.observer.disconnect(); }
    });
    entry.observer.observe(document.body, { childList: true, subtree: true, characterData: true });
    [...document.querySelectorAll(".paymentmethods .button.paymentmethod")]
        .find((el) => el.textContent.includes(%s)).click();
    return entry.click;
})()"""
TIMES_JS = """(() => { const e = window.tbServed; e.observer.disconnect(); e.shown = e.shown || Date.now();
    return JSON.stringify({ click: e.click, shown: e.shown }); })()"""


# -- the figures (pure) ---------------------------------------------------------------------------------------


def percentile(values: list, fraction: float) -> float:
    """Nearest rank, as test_bench.py: with 50 values p99 is the slowest."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def figures(values: list) -> dict:
    """p50, p90, p99 and mean of ``values`` (ms), rounded to 0.1 ms."""
    return {"p50": round(percentile(values, 0.5), 1), "p90": round(percentile(values, 0.9), 1),
            "p99": round(percentile(values, 0.99), 1), "mean": round(sum(values) / len(values), 1)}


def verdicts(result: dict, targets: dict = TARGETS) -> dict:
    """PASS or MISS per target: {"p50": "PASS", "p99": "MISS"}."""
    return {key: "PASS" if result[key] <= limit else "MISS" for key, limit in targets.items()}


def legs(times: list, arrivals: list) -> tuple:
    """(click -> terminal, terminal -> POS) in ms per payment, from the browser's times ({"click", "shown"}, ms)
    and the terminal's arrival times (s since the epoch), in the same order."""
    if len(times) != len(arrivals):
        raise ValueError(f"{len(times)} clicks but {len(arrivals)} terminal requests")
    return ([a * 1000 - t["click"] for t, a in zip(times, arrivals)],
            [t["shown"] - a * 1000 for t, a in zip(times, arrivals)])


#: Odoo's requests of one payment, as its request log names them (update_customer_display: 19.0's POS).
REQUESTS = (("tb_send_payment", "/pos.payment.method/tb_send_payment"), ("/pending", "/terminal_bridge/pending "),
            ("/ack", "/terminal_bridge/ack "), ("/feedback", "/terminal_bridge/feedback "),
            ("update_customer_display", "/pos.config/update_customer_display"))


def request_times(lines: list) -> dict:
    """Odoo's own time per request (SQL + the rest, the last two figures of its werkzeug log line), in ms:
    {name: {"count", "p50", "p90", "max"}} for the requests of REQUESTS found in ``lines``."""
    found: dict = {}
    for line in lines:
        if "werkzeug" not in line:
            continue
        for name, words in REQUESTS:
            if words in line:
                try:
                    sql, rest = (float(x) for x in line.split()[-2:])
                except ValueError:
                    break
                found.setdefault(name, []).append((sql + rest) * 1000)
                break
    return {name: {"count": len(v), "p50": round(percentile(v, 0.5)), "p90": round(percentile(v, 0.9)),
                   "max": round(max(v))} for name, v in found.items()}


def report_line(words: str, result: dict) -> str:
    marks = verdicts(result)
    return (f"{words}: p50 {result['p50']} ms {marks['p50']}, p90 {result['p90']} ms, "
            f"p99 {result['p99']} ms {marks['p99']} (mean {result['mean']} ms)")


# -- the machinery --------------------------------------------------------------------------------------------


class Cluster:
    """A PostgreSQL 15 cluster of its own, as scripts/test-odoo.sh starts it (Unix socket only, no fsync)."""

    def __init__(self, work: str):
        self.data = os.path.join(work, "pg", "data")
        self.socket = os.path.join(work, "pg", "socket")
        self.log = os.path.join(work, "pg", "postgres.log")
        self.as_pg = ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []
        self.started = False
        os.makedirs(self.data)
        os.makedirs(self.socket)
        if self.as_pg:  # initdb and postgres refuse root: the cluster belongs to Debian's postgres account
            subprocess.run(["chown", "-R", "postgres:", os.path.join(work, "pg")], check=True)
            os.chmod(work, 0o755)

    def start(self) -> None:
        subprocess.run([*self.as_pg, f"{PGBIN}/initdb", "-D", self.data, "-U", "odoo", "--auth=trust", "-E", "UTF8",
                        "--locale=C.UTF-8"], check=True, capture_output=True)
        self.started = True
        subprocess.run([*self.as_pg, f"{PGBIN}/pg_ctl", "-D", self.data, "-l", self.log, "-w", "-o",
                        f"-k {self.socket} -c listen_addresses='' -c fsync=off -c synchronous_commit=off "
                        "-c full_page_writes=off", "start"], check=True, capture_output=True)

    def stop(self) -> None:
        if self.started:
            subprocess.run([*self.as_pg, f"{PGBIN}/pg_ctl", "-D", self.data, "-m", "immediate", "stop"],
                           capture_output=True, check=False)


class RecordWatcher(threading.Thread):
    """The moment each request reaches the terminal: the simulator's record file (one line per request) is
    looked at every millisecond, read only when it grew."""

    def __init__(self, path: str):
        super().__init__(daemon=True)
        self.path = path
        self.arrivals: list = []
        self.halt = threading.Event()

    def run(self) -> None:
        seen, size = 0, 0
        while not self.halt.is_set():
            try:
                grown = os.stat(self.path).st_size != size
                if grown:
                    with open(self.path, "rb") as f:
                        data = f.read()
                    size, count = len(data), data.count(b"\n")
            except FileNotFoundError:
                grown = False
            if grown:
                now = time.time()
                self.arrivals.extend([now] * (count - seen))
                seen = count
            time.sleep(0.001)


class LoadSampler(threading.Thread):
    """The 1-minute load average every 10 s while the payments run."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples: list = []
        self.halt = threading.Event()

    def run(self) -> None:
        while True:
            self.samples.append(os.getloadavg()[0])
            if self.halt.wait(10):
                return


def _load(value) -> str:
    return ", ".join(f"{x:.2f}" for x in value)


class Bench:
    def __init__(self, options, work: str, db_host: str):
        sys.path.insert(0, E2E)
        os.environ["TERMINAL_BRIDGE_SRC"] = REPO
        import odoo_e2e  # noqa: PLC0415  (odoo_addons/e2e, on the path only now)
        from pos_page import PosPage  # noqa: PLC0415

        self.e2e, self.PosPage, self.bp = odoo_e2e, PosPage, odoo_e2e.bp
        self.options = options
        self.run = odoo_e2e.Run(argparse.Namespace(odoo_src=options.odoo_src, version=options.version,
                                                   db_host=db_host, db_user="odoo", work=work,
                                                   keep=True))  # no dropdb: the whole cluster goes at the end
        self.db = self.run.db2
        self.page = None

    def set_up(self) -> None:
        run, bp = self.run, self.bp
        started = time.monotonic()
        demo = ["--without-demo=all"] if self.options.version == "18.0" else []
        install = run.spawn("odoo-install", run.odoo_argv("-d", self.db, "-i", "pos_terminal_bridge",
                                                          "--stop-after-init", f"--http-port={bp.free_port()}",
                                                          *demo), env=run.odoo_env())
        code = install.popen.wait(1800)
        if code != 0:
            raise RuntimeError(f"odoo-bin -i pos_terminal_bridge: exit {code}\n{install.tail(3000)}")
        print(f"installed pos_terminal_bridge in {self.db} ({time.monotonic() - started:.0f} s)", flush=True)
        run.start_odoo()  # threaded: --workers=0, /websocket on the HTTP port
        rpc = self.rpc = run.rpc2 = self.e2e.Rpc(run.base, self.db)
        run.bridge_id = rpc("terminal.bridge", "create", {"name": "Served bench"})
        pair_code = rpc("terminal.bridge", "action_pair", [run.bridge_id])["context"]["default_code"]
        env = bp.bridge_env(run.source)
        port = bp.free_port()
        self.record = os.path.join(run.work, f"requests-{TERMINAL}.txt")
        simulator = run.spawn(f"simulator-{TERMINAL}",
                              [bp.PYTHON, "-m", "bridge", "simulate", "caisse-ap", "--listen",
                               f"tcp:{port}:interface=127.0.0.1", "--record", self.record, "--outcome", "approve"],
                              env=env, cwd=run.source)
        simulator.wait_line("listening on")
        ca_file, key_file = bp.make_certificate(run.work)
        front_port = bp.free_port()
        front = run.spawn("tls-front", [bp.PYTHON, "-c", bp.FRONT_SCRIPT, ca_file, key_file, str(front_port),
                                        str(run.odoo_port)], env=env)
        front.wait_line("TLS front listening")
        run.config_path = bp.write_bridge_config(run.work, {TERMINAL: f"127.0.0.1:{port}"}, bp.free_port(),
                                                 name="served-box")
        bp.pair_box(run.config_path, f"https://localhost:{front_port}", self.db, pair_code, ca_file,
                    fetch_interval=self.options.fetch_interval)
        self.daemon = run.spawn("daemon", [bp.PYTHON, "-m", "bridge", "-c", run.config_path, "run"], env=env,
                                cwd=run.source)
        self.daemon.wait_line(bp.READY_LINE)
        run.wait("the bridge's bus link is up", lambda: run.uplink_status().get("bus") is True)
        journal = rpc("account.journal", "search", [("type", "=", "bank")], limit=1)
        rpc("product.product", "create", {"name": PRODUCT, "list_price": 1.98, "available_in_pos": True,
                                          "taxes_id": [(6, 0, [])]})
        terminal_id = rpc("terminal.bridge.terminal", "create", {"bridge_id": run.bridge_id, "name": TERMINAL})
        method = rpc("pos.payment.method", "create", {
            "name": METHOD, "journal_id": journal[0], "payment_method_type": "terminal",
            "use_payment_terminal": "terminal_bridge", "tb_bridge_id": run.bridge_id, "tb_terminal_id": terminal_id})
        # A second method, as test_bench's config has: with one method only, the POS adds its line (and asks the
        # terminal, on 18.0) as soon as the payment screen opens, before any click.
        bank = rpc("pos.payment.method", "create", {"name": "Bank", "journal_id": journal[0]})
        # As test_bench: the POS does not validate by itself, the line stays on "Payment Successful".
        self.config_id = rpc("pos.config", "create", {"name": "Served bench",
                                                      "payment_method_ids": [(6, 0, [bank, method])],
                                                      "auto_validate_terminal_payment": False})
        self.page = self.PosPage(run.source, run.base, None)
        self.page.login(self.db, "admin", "admin")
        self.page.open_register(self.config_id)
        print(f"set up in {time.monotonic() - started:.0f} s; odoo-bin serves {run.base}, logs in {run.work}",
              flush=True)

    def pay(self, watcher: RecordWatcher, index: int) -> dict:
        page = self.page
        page.sell(PRODUCT)
        page.wait(".paymentmethods .button.paymentmethod .payment-name", METHOD)
        page.browser.evaluate(CLICK_JS % json.dumps(METHOD))
        page.wait(".paymentline .electronic_status", "Payment Successful", timeout=30)
        times = json.loads(page.browser.evaluate(TIMES_JS))
        deadline = time.monotonic() + 5
        while len(watcher.arrivals) < index + 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        if len(watcher.arrivals) != index + 1 or watcher.arrivals[index] * 1000 < times["click"]:
            raise RuntimeError(f"payment {index + 1}: {len(watcher.arrivals)} requests at the terminal, the last at "
                               f"{watcher.arrivals[-1:]} s, the click at {times['click']} ms: not one request per "
                               "click, after it")
        page.click(".payment-screen :is(button.validation-button.next, .button.next.highlight)")
        page.next_order()
        return times

    def measure(self) -> dict:
        watcher = RecordWatcher(self.record)
        sampler = LoadSampler()
        watcher.start()
        sampler.start()
        times = []
        started = time.monotonic()
        try:
            for i in range(self.options.payments):
                times.append(self.pay(watcher, i))
        finally:
            watcher.halt.set()
            sampler.halt.set()
            watcher.join()
            sampler.join()
        to_terminal, to_pos = legs(times, watcher.arrivals)
        states = [p["state"] for p in self.rpc("terminal.bridge.payment", "search_read", [], ["state"])]
        daemon_log = self.daemon.output()
        return {"payments": len(times), "seconds": round(time.monotonic() - started),
                "click_to_terminal_ms": figures(to_terminal), "terminal_to_pos_ms": figures(to_pos),
                "approved": states.count("approved"), "odoo_payments": len(states),
                "load_during": sampler.samples, "times": times, "arrivals": watcher.arrivals,
                "box_bus": {"connected": daemon_log.count("bus connected"),
                            "ended": daemon_log.count("bus link ended")}}

    def where_the_time_goes(self, result: dict) -> str:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import pos_roundtrip  # noqa: PLC0415  (its analysis of Odoo's request log, on the same lines)

        lines = self.run.odoo.output().splitlines()
        lines.append("TBBENCH " + json.dumps(result["times"]))
        return pos_roundtrip.where_the_time_goes(lines)

    def close(self) -> None:
        if self.page:
            try:
                self.page.close()
            except Exception as error:  # noqa: BLE001 - stop the others anyway
                print(f"(could not close Chromium: {error})", file=sys.stderr)
        self.run.stop_all()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", default="19.0", help="Odoo's version (19.0, 18.0)")
    parser.add_argument("--odoo-src", help="its source tree (default /opt/odoo-src/VERSION)")
    parser.add_argument("--payments", type=int, default=50)
    parser.add_argument("--fetch-interval", type=int, default=1,
                        help="the box's periodic fetch, s (default 1, as test_bench; the bus wakes it anyway)")
    parser.add_argument("--work", help="a folder for the cluster, the logs and the box (default: a new one, "
                                       "removed at the end unless --keep)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    options = parser.parse_args(argv)
    options.odoo_src = options.odoo_src or f"/opt/odoo-src/{options.version}"
    if not os.path.isfile(os.path.join(options.odoo_src, "odoo-bin")):
        print(f"no odoo-bin in {options.odoo_src}", file=sys.stderr)
        return 2

    def interrupted(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, interrupted)

    work = options.work or tempfile.mkdtemp(prefix="pos-served-")
    os.makedirs(work, exist_ok=True)
    cluster = Cluster(work)
    bench = None
    load_before = os.getloadavg()
    status = 1
    try:
        cluster.start()
        bench = Bench(options, os.path.join(work, "run"), cluster.socket)
        bench.set_up()
        load_start = os.getloadavg()
        result = bench.measure()
        load_after = os.getloadavg()
        with open(os.path.join(work, "result.json"), "w", encoding="utf-8") as f:
            json.dump(result, f)
        version = options.version
        print(f"Odoo {version} served (odoo-bin --workers=0), {result['payments']} payments in {result['seconds']} s, "
              f"{result['approved']} of {result['odoo_payments']} approved in Odoo; the box's bus: {result['box_bus']}")
        print("  " + report_line("click -> terminal", result["click_to_terminal_ms"]))
        print("  " + report_line("terminal -> POS  ", result["terminal_to_pos_ms"]))
        print(f"  {bench.where_the_time_goes(result)}")
        served = request_times(bench.run.odoo.output().splitlines())
        print("  Odoo's time per request, ms (p50 / p90 / max): " + "; ".join(
            f"{name} {t['p50']} / {t['p90']} / {t['max']} ({t['count']}x)" for name, t in served.items()))
        during = result["load_during"]
        print(f"  targets: p50 <= {TARGETS['p50']:.0f} ms, p99 <= {TARGETS['p99']:.0f} ms; load average (1, 5, 15 "
              f"min) before set-up {_load(load_before)}, at the first payment {_load(load_start)}, after "
              f"{_load(load_after)}; 1-min load during the payments {min(during):.2f} to {max(during):.2f}")
        ok = result["approved"] == result["payments"] == result["odoo_payments"]
        status = 0 if ok else 1
    except (Exception, KeyboardInterrupt) as error:  # noqa: BLE001 - reported, everything stopped below
        print(f"pos_served: {type(error).__name__}: {error}", file=sys.stderr)
        if bench:
            print(bench.run.logs(), file=sys.stderr)
    finally:
        if bench:
            bench.close()
        cluster.stop()
        if options.keep or status:
            print(f"(work folder kept: {work})")
        elif not options.work:
            shutil.rmtree(work, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
