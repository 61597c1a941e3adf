"""`systemctl stop` during a payment (issue 13, item 10): the real daemon process gets SIGTERM while a serial
terminal (a pty) is still waiting for the customer's PIN; the payment must end with the terminal's answer."""

import os
import signal

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from bridge.api.client import connect
from bridge.api.tls import fingerprint_of_pem
from bridge.core.journal import Journal
from bridge.service.daemon import STOP_GRACE
from bridge.terminals.caisse_ap.serial_simulator import SerialTerminal
from bridge.terminals.caisse_ap.simulator import SimulatorScript
from tests.daemon_process import DaemonProcess, free_port
from tests.support import add_test_client, credentials_of, write_config


def _systemd_stop_timeout() -> float:
    unit = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "systemd",
                        "terminal-bridge.service")
    with open(unit) as f:
        for line in f:
            if line.startswith("TimeoutStopSec="):
                return float(line.split("=", 1)[1])
    raise AssertionError("no TimeoutStopSec in the unit")


def test_the_stop_grace_fits_in_systemds_stop_timeout():
    import pytest

    try:
        timeout = _systemd_stop_timeout()
    except FileNotFoundError:  # the .deb's build runs the tests without systemd/ around them
        pytest.skip("no source tree around the tests (systemd/terminal-bridge.service is missing)")
    assert timeout - 15 <= STOP_GRACE < timeout


class StopDuringAPaymentTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_a_payment_under_way_at_sigterm_gets_the_terminals_answer(self):
        # the customer takes a while: the answer comes well after the stop began
        terminal = SerialTerminal(reactor, SimulatorScript(delay=1.5))
        device = terminal.open()
        self.addCleanup(terminal.vanish)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        port = free_port()
        path = write_config(directory, {}, port=port)
        with open(path, "a") as f:
            f.write(f"[terminal:till-1]\ntype = caisse-ap-serial\ndevice = {device}\nhealth_interval = 0\n")
        creds = credentials_of(add_test_client(path, "pos"))
        daemon = DaemonProcess.spawn(reactor, path)
        self.addCleanup(lambda: daemon.kill() if daemon.alive else None)
        yield daemon.ready
        with open(os.path.join(directory, "state", "tls", "bridge.crt"), "rb") as f:
            fingerprint = fingerprint_of_pem(f.read())
        factory, opened = connect(reactor, f"wss://127.0.0.1:{port}", creds, fingerprint=fingerprint)
        till = yield opened
        events = []
        factory.on_event = events.append
        yield till.call("hello", {"client": creds.client_id})
        payment = yield till.call("payment.start", {"terminal": "till-1", "amount": 1234, "currency": "EUR"})
        while not terminal.requests:  # the request is on the terminal: the customer is typing the PIN
            yield deferLater(reactor, 0.01, lambda: None)

        ended = daemon.kill(signal.SIGTERM)  # what `systemctl stop` sends
        status = yield ended
        self.assertEqual(status, 0, daemon.tail())
        journal = Journal.open_readonly(os.path.join(directory, "state", "journal.sqlite3"))
        self.addCleanup(journal.close)
        self.assertEqual(journal.get(payment["id"]).state, "approved", daemon.tail())
        # the till, still connected during the stop, was told (its copy may be read after the daemon's exit)
        while not [e for e in events if e["payment"]["id"] == payment["id"] and e["payment"]["final"]]:
            yield deferLater(reactor, 0.01, lambda: None)
        finals = [e["payment"]["state"] for e in events if e["payment"]["id"] == payment["id"] and e["payment"]["final"]]
        self.assertEqual(finals, ["approved"])
        self.assertIn("waiting up to 180 s for 1 payment(s)", daemon.tail(20000))
        self.assertNotIn("Unhandled error", daemon.tail(20000))


def test_the_daemon_stops_its_parts_in_the_stop_order_each_once_the_one_before_has_stopped():
    from twisted.internet.defer import Deferred
    from twisted.internet.task import Clock

    from bridge.service.daemon import STOP_ORDER, Daemon, Part

    assert STOP_ORDER == ("watchdog", "timers", "status page", "listening", "payments in flight",
                          "client connections", "terminal drivers", "uplinks", "journal")
    daemon = Daemon(config=None, reactor=Clock())
    daemon.running = 1  # as start() makes it: each part added is started
    stopping, held = [], {name: Deferred() for name in STOP_ORDER}
    # added in the order a start adds them, which is not the stop order
    for name in ("journal", "terminal drivers", "payments in flight", "timers", "client connections", "listening",
                 "uplinks", "status page", "watchdog"):
        Part(name, lambda name=name: stopping.append(name) or held[name]).setServiceParent(daemon)
    stopped = daemon.stop()
    assert stopping == ["watchdog"]
    for count, name in enumerate(STOP_ORDER, start=1):
        assert stopping == list(STOP_ORDER[:count])
        held[name].callback(None)
    assert stopped.called
    assert not any(part.running for part in daemon)


def test_a_part_that_fails_to_stop_does_not_keep_the_journal_open():
    from twisted.internet.task import Clock

    from bridge.service.daemon import Daemon, Part

    daemon, stopped = Daemon(config=None, reactor=Clock()), []
    daemon.running = 1
    Part("journal", lambda: stopped.append("journal")).setServiceParent(daemon)
    Part("terminal drivers", lambda: 1 / 0).setServiceParent(daemon)
    assert daemon.stop().called and stopped == ["journal"]


def test_a_part_without_a_place_in_the_stop_order_is_refused():
    import pytest
    from twisted.internet.task import Clock

    from bridge.service.daemon import Daemon, Part

    with pytest.raises(ValueError):
        Part("new thing", lambda: None).setServiceParent(Daemon(config=None, reactor=Clock()))


def test_stopping_a_daemon_that_never_started_does_nothing():
    from twisted.internet.task import Clock

    from bridge.service.daemon import Daemon

    notes = []
    stopped = Daemon(config=None, reactor=Clock(), notify=notes.append).stop()
    assert stopped.called and notes == ["STOPPING=1"]


class StartThatFailsTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def test_a_start_that_fails_half_way_stops_what_did_start_and_only_that(self):
        import socket

        from bridge.service.daemon import Daemon
        from tests.support import load_config

        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        self.addCleanup(taken.close)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = write_config(directory, {"till-1": "127.0.0.1:9"}, port=taken.getsockname()[1])
        daemon = Daemon(load_config(path), reactor)
        try:
            yield daemon.start()
        except Exception as e:
            error = e
        else:
            self.fail("the daemon listened on a port already taken")
        self.assertIn("Address already in use", str(error))
        # up before listening failed: the journal, the drivers, the payment service, the client connections
        self.assertEqual(sorted(part.name for part in daemon if part.running),
                         ["client connections", "journal", "payments in flight", "terminal drivers", "timers"])
        yield daemon.stop(grace=1.0)
        self.assertTrue(daemon.journal.closed)
        self.assertEqual([part.name for part in daemon if part.running], [])
