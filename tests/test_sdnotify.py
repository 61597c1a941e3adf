"""sd_notify at the socket level: a real AF_UNIX datagram socket plays systemd."""

import os
import socket
import tempfile
import uuid

import pytest
from twisted.internet.task import Clock

from bridge.service.sdnotify import StatusReporter, WatchdogService, notify, watchdog_interval


class FakeSystemd:
    """The receiving end of NOTIFY_SOCKET: a bound datagram socket."""

    def __init__(self, address: str):
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(2)

    def environ(self) -> dict:
        return {"NOTIFY_SOCKET": self.address}

    def receive(self) -> str:
        return self.sock.recv(4096).decode("utf-8")

    def pending(self) -> list:
        messages = []
        self.sock.setblocking(False)
        try:
            while True:
                messages.append(self.sock.recv(4096).decode("utf-8"))
        except BlockingIOError:
            return messages
        finally:
            self.sock.settimeout(2)

    def close(self):
        self.sock.close()


@pytest.fixture
def systemd():
    # A short directory: AF_UNIX paths are limited to 107 bytes.
    with tempfile.TemporaryDirectory(prefix="tb-") as directory:
        fake = FakeSystemd(os.path.join(directory, "notify"))
        yield fake
        fake.close()


@pytest.fixture
def abstract_systemd():
    fake = FakeSystemd(f"@terminal-bridge-test-{uuid.uuid4().hex}")
    yield fake
    fake.close()


def test_notify_without_notify_socket_sends_nothing_and_returns_false():
    assert notify("READY=1", environ={}) is False


def test_notify_sends_ready_to_a_socket_path(systemd):
    assert notify("READY=1", environ=systemd.environ()) is True
    assert systemd.receive() == "READY=1"


def test_notify_sends_to_an_abstract_socket(abstract_systemd):
    assert notify("WATCHDOG=1", environ=abstract_systemd.environ()) is True
    assert abstract_systemd.receive() == "WATCHDOG=1"


def test_notify_through_the_process_environment(systemd, monkeypatch):
    # With python3-systemd installed this goes through systemd.daemon.notify.
    monkeypatch.setenv("NOTIFY_SOCKET", systemd.address)
    assert notify("READY=1\nSTATUS=listening") is True
    assert systemd.receive() == "READY=1\nSTATUS=listening"


def test_notify_returns_false_when_nobody_listens():
    with tempfile.TemporaryDirectory(prefix="tb-") as directory:
        environ = {"NOTIFY_SOCKET": os.path.join(directory, "gone")}
        assert notify("READY=1", environ=environ) is False


def test_notify_ignores_addresses_it_cannot_reach():
    assert notify("READY=1", environ={"NOTIFY_SOCKET": "vsock:2:1234"}) is False


@pytest.mark.parametrize(
    "environ, expected",
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_watchdog_interval(environ, expected):
    assert watchdog_interval(environ) == expected


def test_ready_carries_the_first_status(systemd):
    reporter = StatusReporter(lambda message: notify(message, systemd.environ()))
    reporter.ready("listening on 0.0.0.0:8443")
    assert systemd.receive() == "READY=1\nSTATUS=listening on 0.0.0.0:8443"


def test_status_lines_are_single_lines_and_not_repeated(systemd):
    reporter = StatusReporter(lambda message: notify(message, systemd.environ()))
    reporter.status("cloud: connected\n2/3 terminals up")
    reporter.status("cloud: connected 2/3 terminals up")
    reporter.status("cloud: offline, 2/3 terminals up")
    assert systemd.pending() == [
        "STATUS=cloud: connected 2/3 terminals up",
        "STATUS=cloud: offline, 2/3 terminals up",
    ]


def watchdog(systemd, clock, **kwargs):
    return WatchdogService(clock, lambda message: notify(message, systemd.environ()), **kwargs)


def test_watchdog_pings_at_half_the_interval(systemd):
    clock = Clock()
    service = watchdog(systemd, clock, interval=30.0)
    service.startService()
    assert systemd.pending() == ["WATCHDOG=1"]
    clock.advance(14.9)
    assert systemd.pending() == []
    clock.advance(0.1)
    assert systemd.pending() == ["WATCHDOG=1"]
    service.stopService()


def test_watchdog_stops_pinging_and_leaves_stopping_to_the_daemon(systemd):
    clock = Clock()
    service = watchdog(systemd, clock, interval=30.0)
    service.startService()
    systemd.pending()
    service.stopService()
    clock.advance(60)
    assert systemd.pending() == []
    assert clock.getDelayedCalls() == []


def test_watchdog_without_interval_says_nothing(systemd):
    clock = Clock()
    service = watchdog(systemd, clock, interval=None)
    service.startService()
    clock.advance(60)
    service.stopService()
    assert systemd.pending() == []


def test_the_daemon_says_stopping_once(tmp_path):
    """`terminal-bridge run` as systemd runs it: READY=1, then SIGTERM, then exactly one STOPPING=1."""
    import signal
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = tmp_path / "bridge.conf"
    config.write_text("[bridge]\nlisten = 127.0.0.1:0\nstate_dir = state\n")
    address = str(tmp_path / "notify")
    systemd = FakeSystemd(address)
    systemd.sock.settimeout(30)
    env = dict(os.environ, PYTHONPATH=root, NOTIFY_SOCKET=address, WATCHDOG_USEC="60000000")
    daemon = subprocess.Popen([sys.executable, "-m", "bridge", "-c", str(config), "run"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        received = []
        while not any(m.startswith("READY=1") for m in received):
            received.append(systemd.receive())
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
        received += systemd.pending()
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        systemd.close()
    assert [m for m in received if "STOPPING=1" in m] == ["STOPPING=1"], received


def test_watchdog_stays_silent_while_unhealthy(systemd):
    clock = Clock()
    health = [False]
    service = watchdog(systemd, clock, interval=2.0, healthy=lambda: health[0])
    service.startService()
    clock.advance(1)
    assert systemd.pending() == []
    health[0] = True
    clock.advance(1)
    assert systemd.pending() == ["WATCHDOG=1"]
    service.stopService()


def test_watchdog_treats_a_failing_health_check_as_unhealthy_and_keeps_checking(systemd):
    clock = Clock()
    calls = []

    def healthy():
        calls.append(clock.seconds())
        if len(calls) == 1:
            raise RuntimeError("serial thread gone")
        return True

    service = watchdog(systemd, clock, interval=2.0, healthy=healthy)
    service.startService()
    assert systemd.pending() == []
    clock.advance(1)
    assert systemd.pending() == ["WATCHDOG=1"]
    assert calls == [0, 1]
    service.stopService()
