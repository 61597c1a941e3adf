"""The Caisse-AP serial driver over real pseudo-terminals with Twisted's real SerialPort, and its timing on a Clock.

Each real-device test runs its own reactor (as tests/test_caisse_ap_tcp.py explains) and checks that nothing -
no open device, no timer - is left behind.  The simulated terminal sits behind a symbolic link, the way
/dev/serial/by-id/... points at the current /dev/ttyACM* across unplugging and plugging again.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest
import serial as pyserial
from serial import SerialException
from twisted.internet.serialport import EIGHTBITS, PARITY_EVEN, PARITY_NONE, SEVENBITS, STOPBITS_ONE
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.selectreactor import SelectReactor
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from bridge.config import TerminalConfig
from bridge.core import states
from bridge.core.money import CURRENCIES
from bridge.errors import BridgeError
from bridge.core.contract import DEBIT, REFUND, ITerminalDriver, PaymentRequest
from bridge.terminals.caisse_ap import concert_v2
from bridge.terminals.caisse_ap.codec import encode_request
from bridge.terminals.caisse_ap.link import ENQ, EOT
from bridge.terminals.caisse_ap import device_states
from bridge.terminals.caisse_ap.serial import (
    CANCEL_MESSAGE,
    CaisseAPSerialDriver,
    ExclusiveSerialPort,
    describe_open_error,
    is_pseudo_terminal,
    line_settings,
)
from bridge.terminals.caisse_ap.serial_options import parse_serial_options
from bridge.terminals.caisse_ap.serial_simulator import LinkFaults, SerialTerminal
from bridge.terminals.caisse_ap.simulator import SimulatorScript
from bridge.terminals.catalogue import VALIDATORS, build_driver
from tests.support import run_in_own_reactor

EUR = CURRENCIES["EUR"]
REQUEST = PaymentRequest("pay-1", DEBIT, 1234, EUR)
FAST = {"ack_timeout": 0.3, "retry_delay": 0.05, "answer_timeout": 2.0, "health_interval": 30.0,
        "reopen_initial_delay": 0.02, "reopen_max_delay": 0.1}


class Journal:
    """A ``before_send`` that checks, like the real journal would need, that nothing reached the terminal before it
    returned; it answers after a short wait so that a driver writing too early is caught."""

    def __init__(self, bench: Bench, terminal: SerialTerminal | None = None, result: Failure | None = None):
        self.calls = 0
        self.bytes_before: list[int] = []
        self.bytes_after_wait: list[int] = []
        self._bench = bench
        self._terminal = terminal
        self._result = result

    def __call__(self) -> Deferred:
        self.calls += 1
        if self._terminal is None:
            return succeed(None)
        self.bytes_before.append(self._terminal.bytes_received)

        def answer(_):
            self.bytes_after_wait.append(self._terminal.bytes_received)
            return self._result

        return deferLater(self._bench.reactor, 0.05, lambda: None).addCallback(answer)


class Bench:
    """A private reactor, a simulated terminal behind a symbolic link, and drivers pointed at the link."""

    def __init__(self, directory: str) -> None:
        self.reactor = SelectReactor()
        self.device = os.path.join(directory, "usb-Ingenico_Desk_5000-if00")
        self.terminals: list[SerialTerminal] = []
        self.drivers: list[CaisseAPSerialDriver] = []
        self.status_after: dict = {}  # the driver's status right after pay_once's payment

    def terminal(self, script=SimulatorScript(), protocol="caisse-ap", faults=LinkFaults(), open=True):
        terminal = SerialTerminal(self.reactor, script, protocol, faults, device_link=self.device)
        if open:
            terminal.open()
        self.terminals.append(terminal)
        return terminal

    def driver(self, protocol="caisse-ap", **options) -> CaisseAPSerialDriver:
        settings = dict(FAST, protocol=protocol)
        settings.update(options)
        driver = CaisseAPSerialDriver("till-1", self.reactor, self.device, **settings)
        driver.start()
        self.drivers.append(driver)
        return driver

    @inlineCallbacks
    def until(self, predicate, what: str, limit: float = 15.0):
        for _ in range(int(limit / 0.01)):
            if predicate():
                return
            yield deferLater(self.reactor, 0.01, lambda: None)
        raise AssertionError(f"still waiting for {what}")

    @inlineCallbacks
    def connected(self, driver: CaisseAPSerialDriver):
        yield self.until(lambda: driver.connected and driver.status().as_dict()["health"] == "up", "the driver to connect")

    def run(self, scenario, timeout: float = 40.0):
        return run_in_own_reactor(self.reactor, scenario, self._clean_up, timeout)

    @inlineCallbacks
    def _clean_up(self):
        for driver in self.drivers:
            yield driver.stop()
        for terminal in self.terminals:
            terminal.close()
        yield deferLater(self.reactor, 0, lambda: None)


@pytest.fixture
def bench(tmp_path) -> Bench:
    return Bench(str(tmp_path))


def pay_once(bench: Bench, driver, terminal, request=REQUEST):
    @inlineCallbacks
    def scenario():
        yield bench.connected(driver)
        # The health check that made the driver "up" ended with an EOT the terminal may not have read yet (a
        # loaded machine): let it arrive, so that only the payment's own bytes are counted against the journal.
        yield bench.until(lambda: terminal.bytes_received >= 2, "the health check's ENQ and EOT at the terminal")
        journal = Journal(bench, terminal)
        outcome = yield driver.pay(request, journal)
        bench.status_after = driver.status().as_dict()
        return outcome, journal

    return bench.run(scenario)


# --- payments over a real pty -------------------------------------------------------------------------------

@pytest.mark.parametrize("line", ["7E1", "8N1"])
def test_approved_payment_is_journaled_before_the_first_byte(bench, line):
    terminal = bench.terminal()
    driver = bench.driver(line=line, baudrate=19200)
    outcome, journal = pay_once(bench, driver, terminal)
    assert (outcome.state, outcome.code) == (states.APPROVED, "approved")
    assert outcome.details["card_masked"] == "497010######1234"
    assert terminal.requests == [encode_request(REQUEST)]
    assert journal.calls == 1 and journal.bytes_before == journal.bytes_after_wait
    status = bench.status_after
    assert (status["state"], status["line"], status["baudrate"], status["last_error"]) == ("idle", line, 19200, None)


def test_declined_payment(bench):
    terminal = bench.terminal(SimulatorScript(outcome="decline", af="04"))
    outcome, _ = pay_once(bench, bench.driver(), terminal)
    assert (outcome.state, outcome.code) == (states.DECLINED, "card_declined")


def test_abandoned_payment(bench):
    terminal = bench.terminal(SimulatorScript(outcome="abandon"))
    outcome, _ = pay_once(bench, bench.driver(), terminal)
    assert (outcome.state, outcome.code) == (states.CANCELLED, "operator_abandon")


def test_refund_is_sent_as_a_credit(bench):
    terminal = bench.terminal()
    outcome, _ = pay_once(bench, bench.driver(), terminal, PaymentRequest("r-1", REFUND, 500, EUR))
    assert outcome.state == states.APPROVED
    assert b"CD0011" in terminal.requests[0]


def test_nak_then_success(bench):
    terminal = bench.terminal(faults=LinkFaults(nak_frames=2))
    outcome, _ = pay_once(bench, bench.driver(), terminal)
    assert outcome.state == states.APPROVED
    assert len(terminal.requests) == 1


def test_request_refused_on_every_try_is_failed(bench):
    terminal = bench.terminal(faults=LinkFaults(nak_frames=4))
    driver = bench.driver()
    outcome, _ = pay_once(bench, driver, terminal)
    assert (outcome.state, outcome.code) == (states.FAILED, "frame_rejected")
    assert terminal.requests == []
    assert bench.status_after["last_error"] == "frame_rejected"


def test_answer_with_a_bad_lrc_is_refused_and_its_good_copy_taken(bench):
    terminal = bench.terminal(faults=LinkFaults(bad_lrc=1))
    outcome, _ = pay_once(bench, bench.driver(), terminal)
    assert (outcome.state, outcome.code) == (states.APPROVED, "approved")


def test_answer_never_readable_is_unknown(bench):
    terminal = bench.terminal(faults=LinkFaults(bad_lrc=4))
    outcome, _ = pay_once(bench, bench.driver(), terminal)
    assert (outcome.state, outcome.code) == (states.UNKNOWN, "malformed_answer")
    assert "wrong checksum" in outcome.message and "may have been charged" in outcome.message


def test_missing_ack_is_unknown(bench):
    terminal = bench.terminal(faults=LinkFaults(no_ack=True))
    driver = bench.driver()
    outcome, _ = pay_once(bench, driver, terminal)
    assert (outcome.state, outcome.code) == (states.UNKNOWN, "no_ack")
    assert "did not confirm" in outcome.message
    assert bench.status_after["last_error"] == "no_ack"


def test_slow_bytes_are_read_whole(bench):
    terminal = bench.terminal(faults=LinkFaults(byte_gap=0.002))
    outcome, _ = pay_once(bench, bench.driver(ack_timeout=0.2), terminal)
    assert outcome.state == states.APPROVED


def test_silent_terminal_is_unknown_after_the_answer_timeout(bench):
    terminal = bench.terminal(SimulatorScript(outcome="never"))
    outcome, _ = pay_once(bench, bench.driver(answer_timeout=0.3), terminal)
    assert (outcome.state, outcome.code) == (states.UNKNOWN, "answer_timeout")


def test_garbled_answer_is_unknown(bench):
    terminal = bench.terminal(SimulatorScript(garbage=True))
    outcome, _ = pay_once(bench, bench.driver(), terminal)
    assert (outcome.state, outcome.code) == (states.UNKNOWN, "malformed_answer")


def test_deaf_terminal_fails_the_payment_before_the_request_and_shows_down(bench):
    terminal = bench.terminal(faults=LinkFaults(deaf=True))
    driver = bench.driver(ack_timeout=0.05)

    @inlineCallbacks
    def scenario():
        yield bench.until(lambda: driver.status().as_dict()["health"] == "down", "the health check to fail")
        assert not driver.status().up
        status = driver.status().as_dict()
        outcome = yield driver.pay(REQUEST, Journal(bench))
        return status, outcome

    status, outcome = bench.run(scenario)
    assert (status["state"], status["health"]) == ("down", "down")
    assert (outcome.state, outcome.code) == (states.FAILED, "terminal_unreachable")
    assert "did not answer the bridge's call (ENQ) after 3 tries" in outcome.message
    assert terminal.bytes_received >= 4  # the health check's ENQ/EOT, then ENQ three times


def test_a_second_payment_while_one_runs_is_refused(bench):
    terminal = bench.terminal(SimulatorScript(delay=0.2))
    driver = bench.driver()

    @inlineCallbacks
    def scenario():
        yield bench.connected(driver)
        first = driver.pay(REQUEST, Journal(bench, terminal))
        second = yield driver.pay(PaymentRequest("pay-2", DEBIT, 100, EUR), Journal(bench))
        busy = driver.status().as_dict()["state"]
        return (yield first), second, busy

    first, second, busy = bench.run(scenario)
    assert first.state == states.APPROVED
    assert (second.state, second.code, busy) == (states.FAILED, "terminal_busy", "busy")
    assert len(terminal.requests) == 1


def test_journal_failure_sends_nothing(bench):
    terminal = bench.terminal()
    driver = bench.driver()
    refusal = Failure(BridgeError("cancelled_before_send", "Cancelled before it reached the terminal."))
    outcome, journal = pay_once_with(bench, driver, terminal, refusal)
    assert (outcome.state, outcome.code) == (states.FAILED, "cancelled_before_send")
    assert terminal.requests == [] and journal.bytes_before == journal.bytes_after_wait


def pay_once_with(bench, driver, terminal, result):
    @inlineCallbacks
    def scenario():
        yield bench.connected(driver)
        # As in pay_once: the health check's trailing EOT must have arrived before the journal counts bytes.
        yield bench.until(lambda: terminal.bytes_received >= 2, "the health check's ENQ and EOT at the terminal")
        journal = Journal(bench, terminal, result)
        outcome = yield driver.pay(REQUEST, journal)
        yield deferLater(bench.reactor, 0.05, lambda: None)
        return outcome, journal

    return bench.run(scenario)


# --- Concert V2 over a real pty -----------------------------------------------------------------------------

@pytest.mark.parametrize(
    "script, faults, state, code",
    [
        (SimulatorScript(), LinkFaults(), states.APPROVED, "approved"),
        (SimulatorScript(outcome="decline"), LinkFaults(), states.DECLINED, "terminal_refused"),
        (SimulatorScript(outcome="abandon"), LinkFaults(), states.DECLINED, "terminal_refused"),
        (SimulatorScript(), LinkFaults(nak_frames=1, bad_lrc=1), states.APPROVED, "approved"),
        (SimulatorScript(), LinkFaults(no_ack=True), states.UNKNOWN, "no_ack"),
        (SimulatorScript(garbage=True), LinkFaults(), states.UNKNOWN, "malformed_answer"),
    ],
)
def test_concert_v2(bench, script, faults, state, code):
    terminal = bench.terminal(script, protocol="concert-v2", faults=faults)
    outcome, _ = pay_once(bench, bench.driver(protocol="concert-v2"), terminal)
    assert (outcome.state, outcome.code) == (state, code)
    if code != "no_ack":
        assert terminal.requests == [concert_v2.encode_request(REQUEST)]


# --- hot-plug -------------------------------------------------------------------------------------------------

def test_device_removed_while_idle_then_back(bench):
    terminal = bench.terminal()
    driver = bench.driver()

    @inlineCallbacks
    def scenario():
        yield bench.connected(driver)
        terminal.vanish()
        yield bench.until(lambda: driver.status().as_dict()["state"] == "disconnected", "the loss to be noticed")
        gone = driver.status().as_dict()
        journal = Journal(bench)
        refused = yield driver.pay(REQUEST, journal)
        terminal.come_back()
        yield bench.connected(driver)
        back = driver.status().as_dict()
        approved = yield driver.pay(PaymentRequest("pay-2", DEBIT, 1234, EUR), Journal(bench, terminal))
        return gone, refused, journal.calls, back, approved

    gone, refused, journal_calls, back, approved = bench.run(scenario)
    assert "went away" in gone["detail"]
    assert (refused.state, refused.code, journal_calls) == (states.FAILED, "terminal_unreachable", 0)
    assert "Nothing was charged" in refused.message and "went away" in refused.message
    assert back["state"] == "idle"
    assert approved.state == states.APPROVED
    assert len(terminal.requests) == 1


def test_device_removed_mid_payment_is_unknown(bench):
    terminal = bench.terminal(SimulatorScript(disconnect=True, delay=0.05))
    driver = bench.driver()
    outcome, _ = pay_once(bench, driver, terminal)
    assert (outcome.state, outcome.code) == (states.UNKNOWN, "link_lost")
    assert "may have been charged" in outcome.message
    assert len(terminal.requests) == 1
    assert bench.status_after["state"] == "disconnected"


def test_device_missing_at_start_is_opened_once_plugged(bench):
    terminal = bench.terminal(open=False)
    driver = bench.driver()

    @inlineCallbacks
    def scenario():
        yield bench.until(lambda: driver.status().as_dict()["detail"].endswith("switched on?"), "the first attempt")
        missing = driver.status().as_dict()
        yield deferLater(bench.reactor, 0.15, lambda: None)  # several attempts, each failing the same way
        terminal.open()
        yield bench.connected(driver)
        return missing, (yield driver.pay(REQUEST, Journal(bench, terminal)))

    missing, outcome = bench.run(scenario)
    assert missing["state"] == "disconnected"
    assert missing["detail"] == f"The device {bench.device} does not exist: is the terminal plugged in and switched on?"
    assert outcome.state == states.APPROVED


def test_the_device_is_opened_exclusively_and_released_on_stop(bench):
    # The default line, 7E1, on the same pty twice: see test_a_pty_is_opened_without_parity_so_it_can_be_reopened.
    bench.terminal()
    first = bench.driver()

    @inlineCallbacks
    def scenario():
        yield bench.connected(first)
        second = bench.driver()
        yield bench.until(lambda: "in use" in second.status().as_dict()["detail"], "the second driver to be refused")
        refused = second.status().as_dict()
        yield first.stop()
        yield bench.connected(second)
        return refused

    refused = bench.run(scenario)
    assert refused["state"] == "disconnected"
    assert "in use by another program" in refused["detail"]


def test_health_check_runs_when_idle_and_notices_a_deaf_terminal(bench):
    terminal = bench.terminal()
    # The ACK must come back within ack_timeout on a busy machine too, or the terminal looks deaf when it is not.
    driver = bench.driver(health_interval=0.05, ack_timeout=0.5)

    @inlineCallbacks
    def scenario():
        yield bench.connected(driver)
        before = terminal.bytes_received
        yield bench.until(lambda: terminal.bytes_received >= before + 4, "two more health checks")
        terminal.faults = LinkFaults(deaf=True)
        yield bench.until(lambda: driver.status().as_dict()["state"] == "down", "the terminal to be marked down")
        terminal.faults = LinkFaults()
        yield bench.until(lambda: driver.status().as_dict()["state"] == "idle", "the terminal to be marked up again")

    bench.run(scenario)


def test_a_deaf_terminal_that_recovers_after_its_port_was_reopened_is_marked_up(bench):
    terminal = bench.terminal(faults=LinkFaults(deaf=True))
    opened = []

    def counting_port(*args, **kwargs):
        port = ExclusiveSerialPort(*args, **kwargs)
        opened.append(port)
        return port

    driver = bench.driver(health_interval=0.05, ack_timeout=0.2, port_factory=counting_port)

    @inlineCallbacks
    def scenario():
        yield bench.until(lambda: len(opened) >= 3 and driver.connected, "two reopenings to wake the terminal")
        terminal.faults = LinkFaults()
        yield bench.until(lambda: driver.status().as_dict()["health"] == "up", "the terminal to be marked up again")
        return driver.status().as_dict()

    status = bench.run(scenario)
    assert (status["state"], status["line"]) == ("idle", "7E1")


def test_a_pty_is_opened_without_parity_so_it_can_be_reopened(tmp_path):
    master, slave = os.openpty()
    link = str(tmp_path / "usb-virtual")
    os.symlink(os.ttyname(slave), link)
    try:
        assert is_pseudo_terminal(link)
        assert line_settings(link, "7E1") == (EIGHTBITS, PARITY_NONE, STOPBITS_ONE)
        assert line_settings(link, "8N1") == (EIGHTBITS, PARITY_NONE, STOPBITS_ONE)
        # Linux refuses 7E1 on a pty when nothing else changes, so the second open would fail with EINVAL.
        for _ in range(3):
            port = pyserial.Serial(link, 9600, *line_settings(link, "7E1"), timeout=0, exclusive=True)
            port.close()
    finally:
        os.close(master)
        os.close(slave)


def test_a_real_line_gets_the_configured_character_size_and_parity(tmp_path):
    assert not is_pseudo_terminal("/dev/null")  # a character device, not a pty
    assert line_settings("/dev/null", "7E1") == (SEVENBITS, PARITY_EVEN, STOPBITS_ONE)
    assert line_settings(str(tmp_path / "absent"), "7E1") == (SEVENBITS, PARITY_EVEN, STOPBITS_ONE)
    assert line_settings(str(tmp_path / "absent"), "8N1") == (EIGHTBITS, PARITY_NONE, STOPBITS_ONE)


# --- timing and reopening on a Clock, with a recording port ----------------------------------------------------

class FakePort:
    """What the driver needs of a SerialPort: write and loseConnection (the protocol is told at once)."""

    def __init__(self, protocol, device, reactor, **settings) -> None:
        self.protocol, self.device, self.settings = protocol, device, settings
        self.written = bytearray()
        self.open = True

    def write(self, data: bytes) -> None:
        self.written += data

    def loseConnection(self) -> None:
        self.open = False
        self.protocol.connectionLost(Failure(Exception("closed")))


class PortFactory:
    def __init__(self) -> None:
        self.error: Exception | None = SerialException(errno.ENOENT, "could not open port")
        self.attempts: list[float] = []
        self.ports: list[FakePort] = []
        self.clock: Clock | None = None

    def __call__(self, protocol, device, reactor, **settings):
        self.attempts.append(reactor.seconds())
        if self.error is not None:
            raise self.error
        port = FakePort(protocol, device, reactor, **settings)
        self.ports.append(port)
        return port


def clock_driver(**options):
    clock, factory = Clock(), PortFactory()
    settings = {"reopen_initial_delay": 1.0, "reopen_max_delay": 8.0, "health_interval": 60.0,
                "ack_timeout": 1.0, "port_factory": factory}
    settings.update(options)
    driver = CaisseAPSerialDriver("till-1", clock, "/dev/serial/by-id/usb-X", **settings)
    driver.start()
    return clock, factory, driver


def test_driver_provides_the_interface_and_the_red_button_words():
    _clock, _factory, driver = clock_driver()
    assert verifyObject(ITerminalDriver, driver)
    assert driver.kind == "caisse-ap-serial"
    assert driver.cancel("pay-1") == CANCEL_MESSAGE
    assert "red button" in CANCEL_MESSAGE


def test_reopening_backs_off_and_is_capped():
    clock, factory, driver = clock_driver()
    clock.advance(0)
    clock.pump([0.5] * 60)
    assert factory.attempts[:6] == [0.0, 1.0, 3.0, 7.0, 15.0, 23.0]  # +1, +2, +4, +8, then +8 each time
    assert driver.status().as_dict()["state"] == "disconnected"


def test_line_settings_reach_the_port():
    clock, factory, _driver = clock_driver(baudrate=1200, line="8N1")
    factory.error = None
    clock.advance(0)
    assert factory.ports[0].settings == {"baudrate": 1200, "bytesize": 8, "parity": "N", "stopbits": 1}


def test_payment_while_disconnected_fails_at_once_without_journaling():
    clock, _factory, driver = clock_driver()
    clock.advance(0)
    calls = []
    outcome = driver.pay(REQUEST, lambda: calls.append(1))
    result = []
    outcome.addCallback(result.append)
    assert result[0].state == states.FAILED and result[0].code == "terminal_unreachable"
    assert calls == []


def test_health_check_pings_when_idle_and_marks_down_on_silence():
    clock, factory, driver = clock_driver()
    factory.error = None
    clock.advance(0)
    port = factory.ports[0]
    assert bytes(port.written) == bytes([ENQ])  # checked as soon as opened
    clock.advance(1.0)
    assert bytes(port.written) == bytes([ENQ, EOT])
    assert driver.status().as_dict()["state"] == "down"
    clock.advance(59.0)
    assert bytes(port.written) == bytes([ENQ, EOT, ENQ])
    port.protocol.dataReceived(bytes([0x06]))
    assert driver.status().as_dict()["state"] == "idle"


def test_a_terminal_silent_twice_in_a_row_gets_its_port_reopened_to_wake_it():
    clock, factory, driver = clock_driver()
    factory.error = None
    clock.advance(0)
    clock.advance(1.0)  # the check at open goes unanswered: down, but the port stays open
    assert driver.status().as_dict()["state"] == "down" and len(factory.ports) == 1 and factory.ports[0].open
    clock.advance(59.0)
    clock.advance(1.0)  # the next check goes unanswered too: close the port ...
    assert not factory.ports[0].open
    assert "stopped answering" in driver.status().as_dict()["detail"]
    clock.advance(1.0)  # ... and open it again, which checks at once
    assert len(factory.ports) == 2
    factory.ports[1].protocol.dataReceived(bytes([0x06]))  # the terminal woke up
    assert driver.status().as_dict()["state"] == "idle"


def test_a_terminal_that_answers_the_second_check_keeps_its_port():
    clock, factory, driver = clock_driver()
    factory.error = None
    clock.advance(0)
    clock.advance(1.0)
    clock.advance(59.0)
    factory.ports[0].protocol.dataReceived(bytes([0x06]))
    clock.advance(60.0)
    assert len(factory.ports) == 1 and factory.ports[0].open


def test_an_unplugged_terminal_is_not_said_to_be_up():
    clock, factory, driver = clock_driver()
    factory.error = None
    clock.advance(0)
    factory.ports[0].protocol.dataReceived(bytes([0x06]))  # the check at open is answered
    assert (driver.status().as_dict()["state"], driver.status().as_dict()["health"]) == ("idle", "up")
    factory.error = OSError(2, "No such file or directory")
    factory.ports[0].loseConnection()  # USB unplugged
    gone = driver.status().as_dict()
    assert (gone["state"], gone["health"]) == ("disconnected", "unchecked"), gone
    clock.advance(30.0)  # reopening keeps failing
    assert (driver.status().as_dict()["state"], driver.status().as_dict()["health"]) == ("disconnected", "unchecked")


def test_device_lost_mid_payment_before_the_frame_is_failed():
    clock, factory, driver = clock_driver(health_interval=0.0)
    factory.error = None
    clock.advance(0)
    result = []
    driver.pay(REQUEST, lambda: succeed(None)).addCallback(result.append)
    assert bytes(factory.ports[0].written) == bytes([ENQ])
    factory.ports[0].loseConnection()
    assert (result[0].state, result[0].code) == (states.FAILED, "terminal_unreachable")


def test_device_lost_after_the_frame_is_unknown():
    clock, factory, driver = clock_driver(health_interval=0.0)
    factory.error = None
    clock.advance(0)
    result = []
    driver.pay(REQUEST, lambda: succeed(None)).addCallback(result.append)
    factory.ports[0].protocol.dataReceived(bytes([0x06]))  # ACK: the frame goes out
    factory.ports[0].loseConnection()
    assert (result[0].state, result[0].code) == (states.UNKNOWN, "link_lost")
    assert driver.status().as_dict()["state"] == "disconnected"


def test_stop_closes_and_stops_reopening():
    clock, factory, driver = clock_driver()
    factory.error = None
    clock.advance(0)
    stopped = []
    driver.stop().addCallback(stopped.append)
    assert stopped == [None] and not factory.ports[0].open
    clock.advance(100)
    assert len(factory.ports) == 1 and clock.getDelayedCalls() == []


@pytest.mark.parametrize(
    "code, words",
    [(errno.ENOENT, "does not exist"), (errno.EACCES, "dialout group"), (errno.EWOULDBLOCK, "in use"),
     (errno.EIO, "could not be opened")],
)
def test_open_errors_are_described_for_the_installer(code, words):
    assert words in describe_open_error("/dev/ttyACM0", SerialException(code, "x"))


# --- configuration ------------------------------------------------------------------------------------------

def test_a_bridge_without_serial_terminals_does_not_load_the_serial_driver():
    """Checking options, the CLI's parser and the daemon's modules leave pyserial and the driver unloaded."""
    code = (
        "import sys\n"
        "from bridge.cli.main import build_parser\n"
        "build_parser()\n"
        "import bridge.service.run, bridge.service.daemon\n"
        "from bridge.terminals.catalogue import VALIDATORS\n"
        "assert VALIDATORS['caisse-ap-serial']({'device': '/dev/ttyACM0'}) == []\n"
        "assert VALIDATORS['caisse-ap-serial']({'device': '/dev/x', 'line': '9X9'})[0][0] == 'line'\n"
        "print(sorted(m for m in sys.modules if m == 'serial' or m.startswith(('serial.', 'twisted.internet.serial'))"
        " or m == 'bridge.terminals.caisse_ap.serial'))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_option_checker_knows_the_drivers_line_settings():
    from bridge.terminals.caisse_ap.serial import LINES
    from bridge.terminals.caisse_ap.serial_options import LINE_NAMES

    assert tuple(LINES) == LINE_NAMES


def test_options_with_defaults():
    kwargs, problems = parse_serial_options({"type": "caisse-ap-serial", "device": "/dev/ttyACM0"})
    assert (kwargs, problems) == ({"device": "/dev/ttyACM0"}, [])
    driver = CaisseAPSerialDriver("t", MemoryReactorClock(), **kwargs)
    assert driver.status().as_dict()["line"] == "7E1" and driver.status().as_dict()["baudrate"] == 9600


def test_every_option():
    kwargs, problems = parse_serial_options({
        "device": "/dev/serial/by-id/usb-Ingenico-if00", "baudrate": "115200", "line": "8n1",
        "protocol": "concert-v2", "answer_timeout": "120", "ack_timeout": "2", "health_interval": "0",
        "pos_number": "03", "protocol_version": "0320", "cash_register_id": "247300123456",
    })
    assert problems == []
    assert kwargs == {"device": "/dev/serial/by-id/usb-Ingenico-if00", "baudrate": 115200, "line": "8N1",
                      "protocol": "concert-v2", "answer_timeout": 120.0, "ack_timeout": 2.0,
                      "health_interval": 0.0, "pos_number": "03", "protocol_version": "0320",
                      "cash_register_id": "247300123456"}


def test_bad_options_are_each_named():
    _kwargs, problems = parse_serial_options({
        "baudrate": "9601", "line": "7N2", "protocol": "v3", "answer_timeout": "-1", "health_interval": "soon",
        "pos_number": "1", "port": "COM1",
    })
    keys = {key for key, _ in problems}
    assert keys == {"device", "baudrate", "line", "protocol", "answer_timeout", "health_interval", "pos_number",
                    "port"}
    assert any("by-id" in problem for key, problem in problems if key == "device")


def test_relative_device_is_refused():
    _kwargs, problems = parse_serial_options({"device": "ttyACM0"})
    assert problems[0][0] == "device"


def test_catalogue_builds_the_serial_driver_and_the_started_driver_opens_its_device_on_the_next_turn():
    assert VALIDATORS["caisse-ap-serial"]({"device": "/dev/ttyACM0"}) == []
    reactor = MemoryReactorClock()
    driver = build_driver(TerminalConfig("till-1", "caisse-ap-serial", {"device": "/nonexistent/tty"}), reactor)
    assert driver.kind == "caisse-ap-serial"
    reactor.advance(0)
    assert reactor.getDelayedCalls() == []  # the builder only builds: the daemon starts the driver
    driver.start()
    assert driver.status().as_dict()["state"] == "disconnected" and not driver.status().up
    reactor.advance(0)
    assert "does not exist" in driver.status().as_dict()["detail"]
    # the daemon alone stops it, in its stop order (after the payments in flight): no trigger of the driver's own
    assert reactor.triggers == {}
    driver.stop()


# --- the simulator's command line ---------------------------------------------------------------------------

def test_simulate_serial_command_line_opens_a_device_behind_the_link(tmp_path):
    from bridge.cli.main import build_parser
    from bridge.cli.simulators import start_serial_simulator

    link_path = str(tmp_path / "sim-tty")
    args = build_parser().parse_args([
        "simulate", "caisse-ap", "--serial", "--protocol", "concert-v2", "--device-link", link_path,
        "--nak", "1", "--bad-lrc", "2", "--byte-gap", "0.01", "--no-ack", "--outcome", "decline",
    ])
    terminal = start_serial_simulator(SelectReactor(), args)
    try:
        assert terminal.path == link_path and os.path.realpath(link_path).startswith("/dev/pts/")
        assert (terminal.protocol, terminal.script.outcome) == ("concert-v2", "decline")
        assert terminal.faults == LinkFaults(nak_frames=1, no_ack=True, bad_lrc=2, byte_gap=0.01)
    finally:
        terminal.close()
    assert not os.path.lexists(link_path)


def test_simulate_without_serial_keeps_the_tcp_simulator():
    from bridge.cli.main import build_parser

    args = build_parser().parse_args(["simulate", "caisse-ap", "--listen", "tcp:0"])
    assert args.serial is False and args.listen == "tcp:0"


def test_the_device_life_cycle_follows_its_table():
    clock, factory, driver = clock_driver()
    seen = [driver._device]
    original = driver._move

    def move(new):
        original(new)
        seen.append(new)

    driver._move = move
    clock.advance(0)  # the device is missing: stays opening
    factory.error = None
    clock.advance(1.0)  # opened
    clock.advance(1.0)  # the check at open goes unanswered: down
    clock.advance(59.0)
    clock.advance(1.0)  # unanswered again: closed on purpose to wake the terminal
    clock.advance(1.0)  # reopened
    assert len(factory.ports) == 2
    factory.ports[-1].loseConnection()  # unplugged
    clock.advance(1.0)
    driver.stop()
    assert seen == ["opening", "opening", "open", "waking", "opening", "open", "opening", "open", "stopping",
                    "closed"]
    with pytest.raises(device_states.IllegalDeviceTransition):
        device_states.check("closed", "open")
    # every state can be left, and only stopping or an open never made ends in closed
    assert all(device_states.TRANSITIONS[state] for state in device_states.TRANSITIONS)
    assert {s for s, nxt in device_states.TRANSITIONS.items() if "closed" in nxt} == {"opening", "stopping"}


def test_a_deaf_terminal_is_not_woken_while_the_device_is_stopping():
    clock, factory, driver = clock_driver()
    factory.error = None
    clock.advance(0)
    factory.ports[0].loseConnection = lambda: None  # the close takes its time
    driver.stop()
    driver._reopen_to_wake()
    assert driver._device == "stopping"
