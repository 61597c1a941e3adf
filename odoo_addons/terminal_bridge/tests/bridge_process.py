"""The real terminal-bridge daemon, paired with the Odoo under test, for end-to-end tests in Odoo's test runner.

Stable API (pos_terminal_bridge's tours import it):

    from odoo.addons.terminal_bridge.tests.bridge_process import BridgeBench

    bench = BridgeBench(self)                      # self: an HttpCase
    bridge = bench.start({"till-1": "approve"})    # a paired terminal.bridge record, its daemon running
    payment = bridge.start_payment("till-1", 1234, "EUR")
    bench.wait_for(lambda: payment.is_final)       # polls the database while the daemon talks to Odoo
    bench.stop_bridge(); bench.start_bridge()      # the same daemon, stopped and started again
    bench.start_bridge(wait=False)                 # ... without waiting for it to listen
    bench.stop_front(); bench.start_front()        # Odoo unreachable for the box, then back
    bench.terminal_requests("till-1")              # the requests the simulated terminal received
    bench.uplink_status()                          # `terminal-bridge uplink status --json`
    bench.logs()                                   # the daemon's and simulators' output, for failure messages
    OUTCOMES["name"] = [...]                       # more simulator scripts (arguments of simulate caisse-ap)

Everything is real except the card terminal: the daemon is ``/usr/bin/python3 -m bridge run`` from the bridge's
source (TERMINAL_BRIDGE_SRC, else the repository three folders up from this addon), each terminal is a
``terminal-bridge simulate caisse-ap`` process, and the uplink reaches Odoo's plain-HTTP test server through a TLS
front on loopback (Twisted's portforward behind a self-signed certificate the uplink's ``ca_file`` trusts), so
the uplink keeps refusing plain http as it does for installers. Pairing goes through /terminal_bridge/pair with
the one-time code and the real ``terminal-bridge uplink pair`` command (see :func:`pair_box`).

Odoo's HttpCase serves requests on its own cursor, one request at a time, while the test waits:
:meth:`BridgeBench.wait_for` lets requests through (19.0: ``allow_requests``; 18.0: the registry's test lock)
and reads the database between them. Everything started is stopped at the test's cleanup; the logs of the
daemon, the simulators and the front are printed when a wait times out.
"""

import contextlib
import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

ADDON = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = "/usr/bin/python3"
READY_LINE = "Listening for clients"
#: Outcomes of the simulated terminals: name -> arguments of `terminal-bridge simulate caisse-ap`.
OUTCOMES = {
    "approve": ["--outcome", "approve", "--delay", "0.3"],
    "approve-slow": ["--outcome", "approve", "--delay", "4"],  # time for a test to act while the card is read
    "decline": ["--outcome", "decline", "--af", "04", "--delay", "0.3"],
    "abandon": ["--outcome", "abandon", "--delay", "0.3"],
    "never": ["--outcome", "never"],
}

#: The TLS front: Twisted's portforward over an SSL endpoint (argv: cert key listen_port target_port).
FRONT_SCRIPT = """
import sys
from twisted.internet import endpoints, reactor
from twisted.protocols import portforward
cert, key, port, target = sys.argv[1:5]
endpoint = endpoints.serverFromString(reactor, f"ssl:{port}:interface=127.0.0.1:privateKey={key}:certKey={cert}")
def ready(listening):
    print("TLS front listening on", listening.getHost().port, flush=True)
endpoint.listen(portforward.ProxyFactory("127.0.0.1", int(target))).addCallbacks(
    ready, lambda f: (print("TLS front failed:", f.getErrorMessage(), flush=True), reactor.stop()))
reactor.run()
"""


def bridge_source():
    """The bridge's source tree: TERMINAL_BRIDGE_SRC, else the repository holding this addon."""
    return os.environ.get("TERMINAL_BRIDGE_SRC") or os.path.dirname(os.path.dirname(ADDON))


def free_port():
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_certificate(directory, host="localhost"):
    """A self-signed certificate for ``host`` and 127.0.0.1; returns (cert path, key path)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(host), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = os.path.join(directory, "front.pem"), os.path.join(directory, "front.key")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    os.chmod(key_path, 0o600)
    return cert_path, key_path


class Process:
    """A child process whose output goes to a log file; ``ready`` waits for a line in it."""

    def __init__(self, name, argv, log_path, env=None, cwd=None):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = env
        self.cwd = cwd
        self.popen = None

    def start(self):
        log = open(self.log_path, "ab")  # noqa: SIM115  (closed when the process ends, in stop)
        self.popen = subprocess.Popen(  # pylint: disable=consider-using-with
            self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd, start_new_session=True
        )
        self._log = log
        return self

    def output(self):
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def tail(self, size=4000):
        return self.output()[-size:]

    def wait_line(self, text, timeout=60.0, after=0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output()[after:]:
                return
            if self.popen.poll() is not None:
                raise AssertionError(f"{self.name} ended ({self.popen.returncode}) before {text!r}:\n{self.tail()}")
            time.sleep(0.05)
        raise AssertionError(f"{self.name} did not print {text!r} within {timeout} s:\n{self.tail()}")

    @property
    def alive(self):
        return self.popen is not None and self.popen.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=20.0):
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        self._log.close()
        return self.popen.returncode


def bridge_env(source):
    env = {k: v for k, v in os.environ.items() if k not in ("TERMINAL_BRIDGE_FAULT", "NOTIFY_SOCKET", "WATCHDOG_USEC")}
    env.update(PYTHONPATH=source, PYTHONUNBUFFERED="1", TERMINAL_BRIDGE_CONFIG="")
    return env


def write_bridge_config(directory, terminals, port, name="test-box"):
    """bridge.conf with one Caisse-AP TCP terminal per {name: "127.0.0.1:PORT"}; returns its path."""
    lines = ["[bridge]", f"name = {name}", f"listen = 127.0.0.1:{port}", "state_dir = state",
             "clients_file = clients.conf", ""]
    for terminal, address in terminals.items():
        lines += [f"[terminal:{terminal}]", "type = caisse-ap-tcp", f"address = {address}", "connect_timeout = 5",
                  "answer_timeout = 30", ""]
    path = os.path.join(directory, "bridge.conf")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    return path


def pair_box(config_path, url, database, code, ca_file, fetch_interval=1):
    """Pair the box of ``config_path`` with Odoo at ``url`` by the one-time ``code``, with the real command an
    installer types: ``terminal-bridge uplink pair URL CODE --database DB --ca-file PEM``. It writes the client,
    the uplink's secrets file and its [uplink:NAME] section (and asks a running daemon to reload). The section
    then gets ``fetch_interval`` (Odoo's test server sends no bus notification: the periodic fetch carries the
    tests). Returns the uplink's name."""
    source = bridge_source()
    done = subprocess.run(
        [PYTHON, "-m", "bridge", "-c", config_path, "uplink", "pair", url, code, "--database", database,
         "--ca-file", ca_file],
        capture_output=True, text=True, env=bridge_env(source), cwd=source, timeout=120, check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"uplink pair failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    with open(config_path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    names = [line.strip()[len("[uplink:"):-1] for line in lines if line.strip().startswith("[uplink:")]
    if len(names) != 1:
        raise AssertionError(f"uplink pair wrote {len(names)} uplink sections:\n" + "\n".join(lines))
    out = []
    for line in lines:
        if line.strip().startswith("fetch_interval"):
            continue
        out.append(line)
        if line.strip() == f"[uplink:{names[0]}]":
            out.append(f"fetch_interval = {fetch_interval}")
    with open(config_path, "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")
    return names[0]


class BridgeBench:
    """The real daemon, simulated terminals and a TLS front, paired with the Odoo of ``test`` (an HttpCase)."""

    def __init__(self, test, keep=False):
        self.test = test
        self.source = bridge_source()
        self.directory = tempfile.mkdtemp(prefix="terminal-bridge-odoo-")
        self.processes = []
        self.simulators = {}
        self.daemon = None
        self.front = None
        self.bridge = None
        self.config_path = None
        self.url = None
        self.uplink_name = None
        self._hold = None  # Odoo 18's test lock while the test thread holds it (hold_requests)
        if not keep:
            test.addCleanup(shutil.rmtree, self.directory, True)
        test.addCleanup(self.stop_all)

    # -- starting -----------------------------------------------------------------------------------

    def _log_size(self, name):
        """How much of ``name``'s log (kept across its restarts) was written before now."""
        try:
            with open(os.path.join(self.directory, f"{name}.log"), encoding="utf-8", errors="replace") as f:
                return len(f.read())
        except FileNotFoundError:
            return 0

    def _spawn(self, name, argv, env=None, cwd=None):
        process = Process(name, argv, os.path.join(self.directory, f"{name}.log"), env=env, cwd=cwd)
        self.processes.append(process)
        return process.start()

    def start(self, terminals=None, name="Test shop"):
        """Start everything and pair; returns the paired terminal.bridge record."""
        if not os.path.exists(os.path.join(self.source, "bridge", "__main__.py")):
            self.test.skipTest(f"no bridge source at {self.source} (set TERMINAL_BRIDGE_SRC)")
        terminals = terminals or {"till-1": "approve"}
        env = bridge_env(self.source)
        addresses = {}
        for terminal, outcome in terminals.items():
            port = free_port()
            simulator = self._spawn(
                f"simulator-{terminal}",
                [PYTHON, "-m", "bridge", "simulate", "caisse-ap", "--listen", f"tcp:{port}:interface=127.0.0.1",
                 "--record", self._record_path(terminal), *OUTCOMES[outcome]],
                env=env, cwd=self.source,
            )
            simulator.wait_line("listening on")
            self.simulators[terminal] = simulator
            addresses[terminal] = f"127.0.0.1:{port}"
        self.ca_file, self._front_key = make_certificate(self.directory)
        self._front_port = free_port()
        self.start_front()
        self.url = f"https://localhost:{self._front_port}"
        self.config_path = write_bridge_config(self.directory, addresses, free_port())
        self.bridge = self.test.env["terminal.bridge"].create({"name": name})
        code = self.bridge.action_pair()["context"]["default_code"]
        with self.requests_allowed():
            self.uplink_name = pair_box(self.config_path, self.url, self.test.env.cr.dbname, code, self.ca_file)
        self.test.env.invalidate_all()
        self.start_bridge()
        return self.bridge

    def start_front(self):
        """Start (or start again, on the same port) the TLS front: Odoo is reachable."""
        assert self.front is None or not self.front.alive, "the TLS front is running"
        offset = self._log_size("tls-front")
        self.front = self._spawn(
            "tls-front",
            [PYTHON, "-c", FRONT_SCRIPT, self.ca_file, self._front_key, str(self._front_port),
             str(self.test.http_port())],
            env=bridge_env(self.source),
        )
        self.front.wait_line("TLS front listening", after=offset)
        return self.front

    def stop_front(self):
        """Stop the TLS front: to the bridge, Odoo is down (connections refused), as during a restart."""
        self.front.stop()

    def uplink_status(self):
        """``terminal-bridge uplink status --json`` of the daemon: a list of one report per uplink."""
        done = subprocess.run(
            [PYTHON, "-m", "bridge", "-c", self.config_path, "uplink", "status", "--json"],
            capture_output=True, text=True, env=bridge_env(self.source), cwd=self.source, timeout=60, check=False,
        )
        return json.loads(done.stdout or "[]")

    def _record_path(self, terminal):
        return os.path.join(self.directory, f"requests-{terminal}.txt")

    def terminal_requests(self, terminal):
        """The requests the simulated ``terminal`` received, one per line."""
        try:
            with open(self._record_path(terminal), encoding="utf-8", errors="replace") as f:
                return [line for line in f.read().splitlines() if line.strip()]
        except FileNotFoundError:
            return []

    def start_bridge(self, wait=True):
        """Start (or start again) the daemon on the same configuration and state; ``wait=False`` returns at once
        (e.g. from a request thread of a tour, which must not wait on Odoo's own requests)."""
        assert self.daemon is None or not self.daemon.alive, "the daemon is running"
        offset = self._log_size("daemon")
        self.daemon = self._spawn(
            "daemon", [PYTHON, "-m", "bridge", "-c", self.config_path, "run"], env=bridge_env(self.source),
            cwd=self.source,
        )
        if not wait:
            return self.daemon
        with self.requests_allowed():
            self.daemon.wait_line(READY_LINE, after=offset)
        return self.daemon

    def stop_bridge(self):
        """Stop the daemon (SIGTERM, as systemd does); returns its exit status."""
        with self.requests_allowed():
            return self.daemon.stop()

    def stop_all(self):
        with self.requests_allowed():
            for process in reversed(self.processes):
                process.stop()

    # -- waiting on Odoo's test server --------------------------------------------------------------

    @contextlib.contextmanager
    def requests_allowed(self):
        """Let HTTP requests (from the daemon, the front, pairing) reach Odoo's test server meanwhile."""
        with self._database():
            self.test.env.flush_all()
        allow = getattr(self.test, "allow_requests", None)
        if allow is not None:  # 19.0: the test holds the cursor lock and requests need its cookie
            with allow(all_requests=True):
                yield
        else:  # 18.0: requests take the registry's test lock themselves (let go of it if hold_requests took it)
            hold = self._hold
            if hold is not None:
                hold.release()
            try:
                yield
            finally:
                if hold is not None:
                    hold.acquire()

    def hold_requests(self):
        """From now until the test ends, the test thread reads what a tour left while the daemon may still be
        talking to Odoo (an ack, a feedback): on 18.0 those requests now wait for the test's end (or for
        ``requests_allowed``, from the test thread), instead of using the test's cursor at the same time as the
        test ("no results to fetch", seen once in a full run).  19.0 needs nothing: its requests wait for the
        test's leave."""
        if getattr(self.test, "allow_requests", None) is not None or self._hold is not None:
            return
        self._hold = _test_lock(self.test)
        self._hold.acquire()
        self.test.addCleanup(self._release_hold)

    def _release_hold(self):
        hold, self._hold = self._hold, None
        if hold is not None:
            hold.release()

    @contextlib.contextmanager
    def database(self):
        """Hold the cursor while the test thread reads or writes the database with the daemon running, and
        flush what it wrote before letting requests in again. Odoo 18's requests do not wait for the test
        thread: without this, a request and the test used the one cursor at once ("no results to fetch")."""
        with self._database():
            yield
            self.test.env.flush_all()

    @contextlib.contextmanager
    def _database(self):
        """Hold the cursor while the test thread reads (requests wait meanwhile)."""
        lock = _test_lock(self.test)
        with lock:
            yield

    def wait_for(self, predicate, timeout=90.0, what="the condition"):
        """Poll ``predicate()`` (run on fresh values from the database) until it is true; returns its value."""
        deadline = time.monotonic() + timeout
        with self.requests_allowed():
            while True:
                with self._database():
                    self.test.env.invalidate_all()
                    value = predicate()
                if value:
                    return value
                if time.monotonic() > deadline:
                    raise AssertionError(f"{what} did not happen within {timeout} s.\n{self.logs()}")
                time.sleep(0.1)

    def logs(self, size=3000):
        return "\n".join(f"--- {p.name} ---\n{p.tail(size)}" for p in self.processes if p.name != "tls-front")


def _test_lock(test):
    try:  # 19.0
        from odoo.tests.common import _registry_test_lock

        return _registry_test_lock
    except ImportError:  # 18.0
        return getattr(test.registry, "test_lock", None) or threading.RLock()
