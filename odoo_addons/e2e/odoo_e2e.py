#!/usr/bin/python3
"""End to end against a served odoo-bin: what Odoo's own test runner cannot show.

Odoo's runner serves one database on a test cursor, in one process that never restarts. This script serves the
real thing: ``odoo-bin`` with ``--workers=0`` (so ``/websocket`` is served on the HTTP port and the bridge's bus
link is real), on two databases with ``terminal_bridge`` installed and no ``--db-filter`` (a multi-database host),
with the real bridge daemon paired to the second one by ``terminal-bridge uplink pair URL CODE --database DB2``,
through a TLS front on loopback, and simulated Caisse-AP terminals. It checks:

1. the multi-database host: without the database's session cookie the routes answer 404 (what the bridge used to
   get), with it they do not; a payment started over JSON-RPC in DB2 (the addon's Python API) reaches approved in
   DB2 with its feedback stored there, and DB1 holds nothing;
2. Odoo killed mid-payment: the terminal approves while odoo-bin is down, the result waits on the box, odoo-bin
   starts again and the result lands once (the bridge retries it), approved in Odoo, nothing doubled;
3. the same through the POS in headless Chromium (DB2 also has point_of_sale and pos_terminal_bridge; see
   pos_checks.py): declined, unknown answered from the POS, then Odoo killed while the terminal holds the card,
   the same page shows the order paid once Odoo is back. With ``--screenshots DIR`` (or ODOO_E2E_SCREENSHOTS;
   default: a folder of ``--work``) it writes what the cashier sees as PNGs, the pictures of docs/odoo.md.

The pieces (TLS front, certificate, pairing, processes) are those of
``odoo_addons/terminal_bridge/tests/bridge_process.py``, loaded by path. It prints one line per check, then
``odoo-e2e-<version>: N passed, M failed``, and exits 1 on any failure; everything it started is stopped, even on
failure or Ctrl-C. scripts/test-odoo.sh runs it after Odoo's runner, on the PostgreSQL cluster it started:

    odoo_e2e.py --odoo-src /opt/odoo-src/19.0 --version 19.0 --db-host /tmp/.../socket --db-user odoo --work DIR
"""
# pylint: disable=print-used  (a command-line script: its output is its report)

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ADDONS = os.path.dirname(HERE)
PYTHON = "/usr/bin/python3"


def _load_bridge_process():
    path = os.path.join(ADDONS, "terminal_bridge", "tests", "bridge_process.py")
    spec = importlib.util.spec_from_file_location("terminal_bridge_e2e_bridge_process", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bp = _load_bridge_process()
import pos_checks  # noqa: E402  (next to this script; it needs nothing of the above)

#: The slow terminal holds the card this long: time to kill odoo-bin after the bridge took the payment.
SLOW_TERMINAL = ["--outcome", "approve", "--delay", "8"]


class Failed(Exception):
    """A wait that did not end well: the run stops (its check is already counted)."""


class Checks:
    def __init__(self, version):
        self.version = version
        self.passed = 0
        self.failed = 0

    def check(self, what, ok, detail=""):
        if ok:
            self.passed += 1
            print(f"ok    {what}" + (f" ({detail})" if detail else ""), flush=True)
        else:
            self.failed += 1
            print(f"FAIL  {what}" + (f": {detail}" if detail else ""), flush=True)
        return ok

    def must(self, what, ok, detail=""):
        if not self.check(what, ok, detail):
            raise Failed(what)

    def summary(self):
        return f"odoo-e2e-{self.version}: {self.passed} passed, {self.failed} failed"


# -- HTTP and JSON-RPC ----------------------------------------------------------------------------------------


def http_post(url, body=b"{}", cookie=None, content_type="application/json"):
    """POST ``body``; returns (status, body text), never following a redirect."""
    headers = {"Content-Type": content_type}
    if cookie:
        headers["Cookie"] = f"session_id={cookie}"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("utf-8", "replace")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def session_cookie(base, database):
    """A public session bound to ``database``, as the bridge gets it: GET /web/login?db=DB."""
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        response = opener.open(f"{base}/web/login?db={database}", timeout=30)
        headers = response.headers
    except urllib.error.HTTPError as error:  # a redirect answer is fine: it carries the cookie
        headers = error.headers
    for value in headers.get_all("Set-Cookie") or []:
        name, _, rest = value.partition("=")
        if name.strip() == "session_id":
            return rest.split(";", 1)[0]
    return None


class Rpc:
    """Odoo's external JSON-RPC API (/jsonrpc) as the admin of one database."""

    def __init__(self, base, database, login="admin", password="admin"):
        self.base = base
        self.database = database
        self.password = password
        self.uid = self.call("common", "login", database, login, password)
        if not self.uid:
            raise Failed(f"cannot log in to {database} as {login}")

    def call(self, service, method, *args):
        body = json.dumps({"jsonrpc": "2.0", "method": "call", "id": 1,
                           "params": {"service": service, "method": method, "args": list(args)}}).encode()
        status, text = http_post(f"{self.base}/jsonrpc", body)
        if status != 200:
            raise RuntimeError(f"/jsonrpc {service}.{method}: HTTP {status}: {text[:300]}")
        answer = json.loads(text)
        if answer.get("error"):
            error = answer["error"]
            raise RuntimeError(f"{service}.{method}: {error.get('data', {}).get('message') or error.get('message')}")
        return answer.get("result")

    def __call__(self, model, method, *args, **kwargs):
        return self.call("object", "execute_kw", self.database, self.uid, self.password, model, method, list(args),
                         kwargs)


# -- the run ------------------------------------------------------------------------------------------------


class Run:
    def __init__(self, options):
        self.options = options
        self.checks = Checks(options.version)
        self.work = os.path.abspath(options.work)
        os.makedirs(self.work, exist_ok=True)
        self.source = bp.bridge_source()
        tag = f"{options.version.split('.')[0]}_{os.getpid()}"
        self.db1, self.db2 = f"tb_e2e_{tag}_one", f"tb_e2e_{tag}_two"
        self.processes = []
        self.odoo = None
        self.odoo_port = bp.free_port()
        self.base = f"http://127.0.0.1:{self.odoo_port}"
        self.config_path = None

    # processes

    def spawn(self, name, argv, env=None, cwd=None):
        process = bp.Process(name, argv, os.path.join(self.work, f"{name}.log"), env=env, cwd=cwd)
        self.processes.append(process)
        return process.start()

    def odoo_argv(self, *extra):
        src = self.options.odoo_src
        return [PYTHON, os.path.join(src, "odoo-bin"),
                f"--addons-path={src}/addons,{src}/odoo/addons,{ADDONS}", f"--data-dir={self.work}/odoo-data",
                f"--db_host={self.options.db_host}", f"--db_user={self.options.db_user}", "--max-cron-threads=0",
                "--http-interface=127.0.0.1", *extra]

    def odoo_env(self):
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["TERMINAL_BRIDGE_SRC"] = self.source
        return env

    def create_databases(self):
        started = time.monotonic()
        demo = ["--without-demo=all"] if self.options.version == "18.0" else []
        # DB2 also gets the POS (pos_terminal_bridge depends on point_of_sale and terminal_bridge).
        installs = [
            self.spawn(f"odoo-install-{db}", self.odoo_argv("-d", db, "-i", addon, "--stop-after-init",
                                                            f"--http-port={bp.free_port()}", *demo),
                       env=self.odoo_env())
            for db, addon in ((self.db1, "terminal_bridge"), (self.db2, "pos_terminal_bridge"))
        ]
        codes = [process.popen.wait(900) for process in installs]
        self.checks.must(f"two databases installed by odoo-bin -i: terminal_bridge ({self.db1}), "
                         f"pos_terminal_bridge ({self.db2})",
                         codes == [0, 0], f"{time.monotonic() - started:.0f} s" if codes == [0, 0] else
                         f"exit {codes}:\n" + "\n".join(p.tail(1500) for p in installs))

    def start_odoo(self):
        """Serve both databases: no -d, no --db-filter, threaded (--workers=0: /websocket on the HTTP port)."""
        self.odoo = self.spawn("odoo", self.odoo_argv(f"--http-port={self.odoo_port}",
                                                      f"--gevent-port={bp.free_port()}", "--workers=0"),
                               env=self.odoo_env())
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if not self.odoo.alive:
                raise Failed(f"odoo-bin ended ({self.odoo.popen.returncode}):\n{self.odoo.tail()}")
            try:
                body = json.dumps({"jsonrpc": "2.0", "method": "call", "id": 1,
                                   "params": {"service": "db", "method": "list", "args": []}}).encode()
                status, text = http_post(f"{self.base}/jsonrpc", body)
                if status == 200:
                    return json.loads(text).get("result") or []
            except OSError:
                pass
            time.sleep(0.2)
        raise Failed(f"odoo-bin did not answer within 120 s:\n{self.odoo.tail()}")

    def kill_odoo(self):
        """SIGKILL, as a crash or an OOM kill: no clean shutdown."""
        self.odoo.stop(signal.SIGKILL)

    def bridge_cli(self, *args):
        return subprocess.run([PYTHON, "-m", "bridge", "-c", self.config_path, *args], capture_output=True,
                              text=True, env=bp.bridge_env(self.source), cwd=self.source, timeout=60, check=False)

    def uplink_status(self):
        done = self.bridge_cli("uplink", "status", "--json")
        try:
            return json.loads(done.stdout or "[]")[0]
        except (ValueError, IndexError):
            return {}

    def requests_of(self, terminal):
        try:
            with open(os.path.join(self.work, f"requests-{terminal}.txt"), encoding="utf-8") as f:
                return [line for line in f.read().splitlines() if line.strip()]
        except FileNotFoundError:
            return []

    def wait(self, what, predicate, timeout=90.0):
        """Poll ``predicate`` until it returns something true; a timeout is a failed check and ends the run."""
        started = time.monotonic()
        last_error = None
        while time.monotonic() - started < timeout:
            try:
                value = predicate()
                if value:
                    return value, time.monotonic() - started
            except (OSError, RuntimeError) as error:
                last_error = error
            time.sleep(0.2)
        self.checks.check(what, False, f"not within {timeout:.0f} s (last error: {last_error})\n{self.logs()}")
        raise Failed(what)

    def logs(self):
        shown = {p.log_path: p for p in self.processes  # odoo-bin started again writes to the same log
                 if p.name in ("daemon", "odoo") or p.name.startswith("simulator")}
        return "\n".join(f"--- {p.name} ---\n{p.tail(2000)}" for p in shown.values())

    # scenarios

    def multi_database(self):
        databases = self.start_odoo()
        self.checks.check("odoo-bin serves both databases, without --db-filter",
                          {self.db1, self.db2} <= set(databases), f"db.list: {databases}")
        # Without the session cookie, Odoo cannot tell the database: the routes do not exist (what the bridge used
        # to get). With DB2's session, the same unsigned request reaches the addon, which refuses it otherwise.
        for route in ("pending", "ack", "feedback"):
            status, _ = http_post(f"{self.base}/terminal_bridge/{route}")
            self.checks.check(f"/terminal_bridge/{route} without a session cookie answers 404 on this host",
                              status == 404, f"HTTP {status}")
        cookie = session_cookie(self.base, self.db2)
        self.checks.must("GET /web/login?db=DB2 gives a session cookie", bool(cookie))
        status, text = http_post(f"{self.base}/terminal_bridge/pending", cookie=cookie)
        self.checks.check("/terminal_bridge/pending with DB2's session reaches the addon (refused, not 404)",
                          status in (400, 401, 403), f"HTTP {status} {text[:120]}")

        self.rpc1, self.rpc2 = Rpc(self.base, self.db1), Rpc(self.base, self.db2)
        self.bridge_id = self.rpc2("terminal.bridge", "create", {"name": "E2E shop"})
        action = self.rpc2("terminal.bridge", "action_pair", [self.bridge_id])
        code = action["context"]["default_code"]

        env = bp.bridge_env(self.source)
        addresses = {}
        terminals = {"till-1": bp.OUTCOMES["approve"], "till-slow": SLOW_TERMINAL, **pos_checks.TERMINALS}
        for terminal, script in terminals.items():
            port = bp.free_port()
            simulator = self.spawn(
                f"simulator-{terminal}",
                [PYTHON, "-m", "bridge", "simulate", "caisse-ap", "--listen", f"tcp:{port}:interface=127.0.0.1",
                 "--record", os.path.join(self.work, f"requests-{terminal}.txt"), *script],
                env=env, cwd=self.source)
            simulator.wait_line("listening on")
            addresses[terminal] = f"127.0.0.1:{port}"
        ca_file, key_file = bp.make_certificate(self.work)
        front_port = bp.free_port()
        front = self.spawn("tls-front", [PYTHON, "-c", bp.FRONT_SCRIPT, ca_file, key_file, str(front_port),
                                         str(self.odoo_port)], env=env)
        front.wait_line("TLS front listening")
        self.config_path = bp.write_bridge_config(self.work, addresses, bp.free_port(), name="e2e-box")
        try:
            # fetch_interval 30: commands come through the bus; the periodic fetch is only the fallback.
            uplink = bp.pair_box(self.config_path, f"https://localhost:{front_port}", self.db2, code, ca_file,
                                 fetch_interval=30)
            self.checks.check("terminal-bridge uplink pair URL CODE --database DB2", True, f"uplink {uplink}")
        except AssertionError as error:
            self.checks.must("terminal-bridge uplink pair URL CODE --database DB2", False, str(error))
        self.odoo_log_from = len(self.odoo.output())  # the bridge's requests start here
        self.daemon = self.spawn("daemon", [PYTHON, "-m", "bridge", "-c", self.config_path, "run"], env=env,
                                 cwd=self.source)
        self.daemon.wait_line(bp.READY_LINE)
        _, took = self.wait("the bridge's bus link to DB2 is up (/websocket served by odoo-bin --workers=0)",
                            lambda: self.uplink_status().get("bus") is True)
        self.checks.check("the bridge's bus link to DB2 is up (/websocket served by odoo-bin --workers=0)", True,
                          f"{took:.1f} s after the daemon started")
        def seen():
            text = self.rpc2("terminal.bridge", "read", [self.bridge_id], ["status_text"])[0]["status_text"]
            return "last seen" in (text or "") and text
        paired, _ = self.wait("DB2 shows the bridge paired and seen (its HTTPS requests reach DB2)", seen, timeout=60)
        self.checks.check("DB2 shows the bridge paired and seen (its HTTPS requests reach DB2)", True, repr(paired))

        command_id = str(uuid.uuid4())
        started = time.monotonic()
        self.rpc2("terminal.bridge", "start_payment", [self.bridge_id], "till-1", 1234, "EUR",
                  command_id=command_id, reference="e2e multi-database")
        fields = ["state", "feedback_ids", "authorization", "card_masked", "command_ids"]

        def approved():
            rows = self.rpc2("terminal.bridge.payment", "search_read", [("command_id", "=", command_id)], fields)
            return rows and rows[0]["state"] == "approved" and rows[0]["feedback_ids"] and rows[0]
        payment, _ = self.wait("a payment started over RPC in DB2 reaches approved", approved)
        self.checks.check("a payment started over RPC in DB2 reaches approved, its feedback stored in DB2",
                          len(payment["feedback_ids"]) == 1 and payment["authorization"] and payment["card_masked"],
                          f"{time.monotonic() - started:.1f} s, feedback {payment['feedback_ids']}, "
                          f"authorisation {payment['authorization']!r}, card {payment['card_masked']!r}")
        feedback = self.rpc2("terminal.bridge.feedback", "search_read", [("id", "in", payment["feedback_ids"])],
                             ["order_ref"])
        self.checks.check("the feedback in DB2 names the payment's command", feedback and
                          feedback[0]["order_ref"] == command_id, repr(feedback))
        counts = {model: self.rpc1(model, "search_count", []) for model in
                  ("terminal.bridge.payment", "terminal.bridge.feedback", "terminal.bridge.command")}
        self.checks.check("DB1 holds no payment, command or feedback", not any(counts.values()), repr(counts))

    def odoo_restarted(self):
        command_id = str(uuid.uuid4())
        self.rpc2("terminal.bridge", "start_payment", [self.bridge_id], "till-slow", 4567, "EUR",
                  command_id=command_id, reference="e2e restart")

        def taken():
            rows = self.rpc2("terminal.bridge.payment", "search_read", [("command_id", "=", command_id)], ["state"])
            return rows and rows[0]["state"] != "queued" and rows[0]["state"]
        state, _ = self.wait("the bridge takes the payment on the slow terminal", taken, timeout=60)
        self.checks.check("the bridge takes the payment on the slow terminal", True, f"state {state!r}")
        self.kill_odoo()
        self.checks.check("odoo-bin killed (SIGKILL) while the terminal holds the card",
                          not self.odoo.alive and len(self.requests_of("till-slow")) == 1 and
                          not self.uplink_status().get("feedback_waiting"),
                          f"requests at the terminal: {len(self.requests_of('till-slow'))}")
        self.wait("the terminal approves while Odoo is down; the result waits on the box",
                  lambda: self.uplink_status().get("feedback_waiting") == 1, timeout=60)
        self.checks.check("the terminal approves while Odoo is down; the result waits on the box",
                          not self.odoo.alive, f"feedback_waiting 1, status: "
                          f"{self.uplink_status().get('last_error') or self.uplink_status().get('feedback_error')}")
        time.sleep(2)  # the bridge tries again while Odoo is still down (refused: it must keep the result)
        self.start_odoo()
        back = time.monotonic()

        def approved():
            rows = self.rpc2("terminal.bridge.payment", "search_read", [("command_id", "=", command_id)],
                             ["state", "feedback_ids", "command_ids"])
            return rows and rows[0]["state"] == "approved" and rows[0]["feedback_ids"] and rows[0]
        payment, _ = self.wait("after odoo-bin starts again, the payment is approved in Odoo", approved, timeout=120)
        self.checks.check("after odoo-bin starts again, the payment is approved in Odoo", True,
                          f"{time.monotonic() - back:.1f} s after Odoo answered again")
        self.wait("the box has no result left to send", lambda: self.uplink_status().get("feedback_waiting") == 0,
                  timeout=60)
        time.sleep(3)  # a doubled delivery would land meanwhile
        payment = self.rpc2("terminal.bridge.payment", "search_read", [("command_id", "=", command_id)],
                            ["state", "feedback_ids", "command_ids"])[0]
        commands = self.rpc2("terminal.bridge.command", "search_read", [("id", "in", payment["command_ids"])],
                             ["state"])
        self.checks.check("the result landed once: one feedback, one command (done), one request at the terminal",
                          len(payment["feedback_ids"]) == 1 and [c["state"] for c in commands] == ["done"] and
                          len(self.requests_of("till-slow")) == 1,
                          f"feedback {payment['feedback_ids']}, commands {commands}, "
                          f"requests {len(self.requests_of('till-slow'))}")
        totals = {model: self.rpc2(model, "search_count", []) for model in
                  ("terminal.bridge.payment", "terminal.bridge.feedback")}
        self.checks.check("DB2 holds two payments and two feedbacks in all (nothing doubled)",
                          totals == {"terminal.bridge.payment": 2, "terminal.bridge.feedback": 2}, repr(totals))
        self.wait("the bus link is up again after the restart", lambda: self.uplink_status().get("bus") is True,
                  timeout=90)
        self.checks.check("the bus link is up again after the restart", True)
        # The next periodic fetch (30 s) at the latest shows that commands can be fetched again.
        done, took = self.wait("terminal-bridge uplink status exits 0 again (payments can flow)",
                               lambda: (lambda d: d.returncode == 0 and d)(self.bridge_cli("uplink", "status")),
                               timeout=75)
        self.checks.check("terminal-bridge uplink status exits 0 again (payments can flow)", True,
                          f"{took:.1f} s after the result landed")
        refused = [line.split(": ", 1)[-1] for line in self.odoo.output()[self.odoo_log_from:].splitlines()
                   if "odoo.addons.terminal_bridge.controllers.main: terminal bridge /" in line and "refused" in line]
        self.checks.check("Odoo refused no request of the paired bridge (before or after the restart)", not refused,
                          "; ".join(refused)[:400])

    def stop_all(self):
        for process in reversed(self.processes):
            try:
                process.stop()
            except Exception as error:  # noqa: BLE001 - stop the others anyway
                print(f"(could not stop {process.name}: {error})", file=sys.stderr)
        if not self.options.keep:
            for db in (self.db1, self.db2):
                subprocess.run(["/usr/lib/postgresql/15/bin/dropdb", "--if-exists", "-h", self.options.db_host,
                                "-U", self.options.db_user, db], capture_output=True, check=False, timeout=60)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--odoo-src", required=True, help="the Odoo source tree (holding odoo-bin)")
    parser.add_argument("--version", required=True, help="its version, for the summary line (19.0, 18.0)")
    parser.add_argument("--db-host", required=True, help="PostgreSQL's host or Unix socket folder")
    parser.add_argument("--db-user", default="odoo")
    parser.add_argument("--work", required=True, help="a folder for logs, the bridge's state and Odoo's data")
    parser.add_argument("--keep", action="store_true", help="keep the two databases at the end")
    parser.add_argument("--screenshots", default=os.environ.get("ODOO_E2E_SCREENSHOTS"),
                        help="write the POS's screenshots (PNG) here (default: ODOO_E2E_SCREENSHOTS, else "
                             "WORK/screenshots)")
    options = parser.parse_args(argv)

    def interrupted(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, interrupted)

    run = Run(options)
    pos = pos_checks.PosChecks(run, options.screenshots or os.path.join(run.work, "screenshots"))
    started = time.monotonic()
    print(f"== odoo-e2e-{options.version}: odoo-bin served from {options.odoo_src} (logs: {run.work})", flush=True)
    try:
        run.create_databases()
        run.multi_database()
        run.odoo_restarted()
        pos.run_all()
    except Failed:
        pass
    except (Exception, KeyboardInterrupt) as error:  # noqa: BLE001 - reported as a failed check
        run.checks.check("the run went to its end", False, f"{type(error).__name__}: {error}\n{run.logs()}")
    finally:
        pos.close()
        run.stop_all()
    print(f"(odoo-e2e-{options.version} took {time.monotonic() - started:.0f} s; the POS's screenshots are in "
          f"{pos.shots})", flush=True)
    print(run.checks.summary(), flush=True)
    return 1 if run.checks.failed or not run.checks.passed else 0


if __name__ == "__main__":
    sys.exit(main())
