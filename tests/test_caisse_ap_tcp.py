"""The Caisse-AP TCP driver: against the simulator over real sockets, and edge timing with a fake reactor."""

from __future__ import annotations

import argparse
import socket
import time

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, inlineCallbacks, maybeDeferred, succeed
from twisted.internet.error import TimeoutError as ConnectTimeoutError
from twisted.internet.interfaces import ISystemHandle
from twisted.internet.selectreactor import SelectReactor
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransportWithDisconnection
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from bridge.core import states
from bridge.core.money import CURRENCIES
from bridge.errors import BridgeError
from bridge.core.contract import CHEQUE, DEBIT, REFUND, ITerminalDriver, PaymentRequest
from bridge.terminals.caisse_ap.codec import encode_request
from bridge.cli.simulators import add_simulator_arguments, start_simulator
from bridge.terminals.caisse_ap.simulator import SimulatorFactory, SimulatorScript
from bridge.terminals.caisse_ap.tcp import (CLOSE_AFTER, CaisseAPTCPDriver, parse_tcp_options, peer_has_closed,
                                            write_now)
from tests.support import run_in_own_reactor

EUR = CURRENCIES["EUR"]
REQUEST = PaymentRequest("pay-1", DEBIT, 1234, EUR)
APPROVAL = (
    b"CZ0040300CJ012012345678901CA00201CE003978CD0010CB0041234AE00210CC003001CI0011AC006184117"
    b"AA016497010######1234"
)


class SendRecorder:
    """A ``before_send`` that counts its calls and notes whether the terminal had already received anything."""

    def __init__(self, simulator: SimulatorFactory | None = None, result=None) -> None:
        self.calls = 0
        self.requests_seen: list[int] = []
        self._simulator = simulator
        self._result = result

    def __call__(self) -> Deferred[None]:
        self.calls += 1
        if self._simulator is not None:
            self.requests_seen.append(len(self._simulator.requests))
        return self._result if self._result is not None else succeed(None)


# --- over real sockets ------------------------------------------------------------------------------------
#
# Each test runs its own reactor instance rather than trial's global one: the driver takes its reactor as an
# argument, and a private reactor works whether or not a pytest plugin (pytest-twisted) is already running the
# global one, which would make trial's TestCase fail with ReactorAlreadyRunning.


class OwnReactor:
    """A private reactor that runs one scenario to its end, then checks nothing was left behind."""

    def __init__(self) -> None:
        self.reactor = SelectReactor()
        self._cleanups: list = []

    def add_cleanup(self, function, *args) -> None:
        self._cleanups.append((function, args))

    def start_simulator(self, script: SimulatorScript = SimulatorScript(), **options):
        simulator = SimulatorFactory(self.reactor, script)
        port = self.reactor.listenTCP(0, simulator, interface="127.0.0.1")
        self.add_cleanup(port.stopListening)
        self.add_cleanup(simulator.drop_connections)
        settings = {"connect_timeout": 1.0, "answer_timeout": 1.0, "quiet_period": 0.05}
        settings.update(options)
        driver = CaisseAPTCPDriver("till-1", self.reactor, "127.0.0.1", port.getHost().port, **settings)
        self.add_cleanup(driver.stop)  # the last payment's connection closes behind its outcome
        return driver, simulator

    def run(self, scenario, timeout: float = 5.0):
        return run_in_own_reactor(self.reactor, scenario, self._clean_up, timeout)

    @inlineCallbacks
    def _clean_up(self):
        for function, args in reversed(self._cleanups):
            yield maybeDeferred(function, *args)


@pytest.fixture
def own() -> OwnReactor:
    return OwnReactor()


def test_driver_provides_the_interface():
    driver = CaisseAPTCPDriver("till-1", MemoryReactorClock(), "127.0.0.1")
    assert verifyObject(ITerminalDriver, driver)
    assert driver.kind == "caisse-ap-tcp"


def test_approved_payment_sends_the_request_once_after_before_send(own):
    driver, simulator = own.start_simulator()
    recorder = SendRecorder(simulator)
    outcome = own.run(lambda: driver.pay(REQUEST, recorder))
    assert (outcome.state, outcome.code) == (states.APPROVED, "approved")
    assert outcome.details["card_masked"] == "497010######1234"
    assert outcome.details["amount_authorised"] == 1234
    assert simulator.requests == [encode_request(REQUEST)]
    assert (recorder.calls, recorder.requests_seen) == (1, [0])
    assert driver.status().as_dict()["state"] == "idle"


def test_a_payments_reader_and_answer_are_freed_without_the_cyclic_collector(own, monkeypatch):
    """Twisted's ended client connection and its connector keep pointing at each other; the driver lets go of
    them, so a payment's reader, parser and answer are freed at once, not at the next full collection."""
    import gc
    import weakref

    from bridge.terminals.caisse_ap import tcp

    made: list = []
    original = tcp._AnswerReader.__init__

    def recording_init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        made.append((weakref.ref(self), weakref.ref(self._parser)))

    monkeypatch.setattr(tcp._AnswerReader, "__init__", recording_init)
    driver, simulator = own.start_simulator()
    gc.disable()
    try:
        outcome = own.run(lambda: driver.pay(REQUEST, SendRecorder(simulator)))
        assert outcome.state == states.APPROVED
        assert len(made) == 1
        assert [(reader(), parser()) for reader, parser in made] == [(None, None)]
    finally:
        gc.enable()


def _has_ipv6_loopback() -> bool:
    import socket

    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_a_terminal_at_an_ipv6_address_is_reached(own):
    simulator = SimulatorFactory(own.reactor)
    port = own.reactor.listenTCP(0, simulator, interface="::1")
    own.add_cleanup(port.stopListening)
    own.add_cleanup(simulator.drop_connections)
    number = port.getHost().port
    driver = CaisseAPTCPDriver("till-1", own.reactor, "::1", number, quiet_period=0.05)
    own.add_cleanup(driver.stop)
    outcome = own.run(lambda: driver.pay(REQUEST, SendRecorder(simulator)))
    assert (outcome.state, len(simulator.requests)) == (states.APPROVED, 1)
    assert driver.status().as_dict()["address"] == f"[::1]:{number}"


def test_refund_and_cheque_are_approved(own):
    driver, _simulator = own.start_simulator()

    @inlineCallbacks
    def scenario():
        refund = yield driver.pay(PaymentRequest("r-1", REFUND, 500, EUR), SendRecorder())
        cheque = yield driver.pay(PaymentRequest("c-1", DEBIT, 500, EUR, CHEQUE), SendRecorder())
        return refund, cheque

    refund, cheque = own.run(scenario)
    assert (refund.state, cheque.state) == (states.APPROVED, states.APPROVED)
    assert cheque.details["application"] == "Cheque"
    assert "card_masked" not in cheque.details


@pytest.mark.parametrize(
    "af, state, code",
    [
        ("04", states.DECLINED, "card_declined"),
        ("05", states.DECLINED, "card_forbidden"),
        ("02", states.DECLINED, "call_issuer"),
        ("06", states.CANCELLED, "cardholder_abandon"),
        ("08", states.CANCELLED, "input_timeout"),
        ("13", states.FAILED, "unsupported_currency"),
    ],
)
def test_each_decline_class(own, af, state, code):
    driver, _simulator = own.start_simulator(SimulatorScript(outcome="decline", af=af))
    outcome = own.run(lambda: driver.pay(REQUEST, SendRecorder()))
    assert (outcome.state, outcome.code) == (state, code)


def test_abandon_with_zero_amount_is_cancelled(own):
    driver, _simulator = own.start_simulator(SimulatorScript(outcome="abandon"))
    outcome = own.run(lambda: driver.pay(REQUEST, SendRecorder()))
    assert (outcome.state, outcome.code) == (states.CANCELLED, "operator_abandon")


def test_unsupported_currency_is_refused_by_the_terminal(own):
    driver, simulator = own.start_simulator()
    simulator.currencies = frozenset({"978"})
    outcome = own.run(lambda: driver.pay(PaymentRequest("p", DEBIT, 100, CURRENCIES["USD"]), SendRecorder()))
    assert (outcome.state, outcome.code) == (states.FAILED, "unsupported_currency")


def test_silent_terminal_ends_unknown_after_the_answer_timeout(own):
    driver, simulator = own.start_simulator(SimulatorScript(outcome="never"), answer_timeout=0.2)
    started = time.monotonic()
    outcome = own.run(lambda: driver.pay(REQUEST, SendRecorder()))
    assert (outcome.state, outcome.code) == (states.UNKNOWN, "answer_timeout")
    assert time.monotonic() - started >= 0.2
    assert len(simulator.requests) == 1
    assert driver.status().as_dict()["last_error"] == "answer_timeout"


def test_split_answer_kept_open_is_read_whole(own):
    script = SimulatorScript(split=6, split_gap=0.02, keep_open=True)
    driver, _simulator = own.start_simulator(script, quiet_period=0.15)
    outcome = own.run(lambda: driver.pay(REQUEST, SendRecorder()))
    assert (outcome.state, outcome.code) == (states.APPROVED, "approved")
    assert outcome.details["authorisation"] == "100001"


def test_delayed_answer_is_waited_for(own):
    driver, _simulator = own.start_simulator(SimulatorScript(delay=0.3))
    outcome = own.run(lambda: driver.pay(REQUEST, SendRecorder()))
    assert outcome.state == states.APPROVED


def test_terminal_closing_ends_the_answer_without_waiting_for_quiet(own):
    driver, _simulator = own.start_simulator(SimulatorScript(keep_open=False), quiet_period=3.0)
    started = time.monotonic()
    outcome = own.run(lambda: driver.pay(REQUEST, SendRecorder()))
    assert outcome.state == states.APPROVED
    assert time.monotonic() - started < 1.5


def test_kept_open_connection_is_closed_by_the_driver(own):
    driver, simulator = own.start_simulator(SimulatorScript(keep_open=True))

    @inlineCallbacks
    def scenario():
        outcome = yield driver.pay(REQUEST, SendRecorder())
        for _ in range(50):
            if not simulator.connections:
                break
            yield deferLater(own.reactor, 0.01, lambda: None)
        return outcome

    outcome = own.run(scenario)
    assert outcome.state == states.APPROVED
    assert simulator.connections == set()


def test_garbage_answer_is_unknown(own):
    driver, _simulator = own.start_simulator(SimulatorScript(garbage=True, keep_open=True))
    outcome = own.run(lambda: driver.pay(REQUEST, SendRecorder()))
    assert (outcome.state, outcome.code) == (states.UNKNOWN, "malformed_answer")
    assert "not printable ASCII" in outcome.details["reason"]


def test_connection_dropped_after_the_request_is_unknown(own):
    driver, simulator = own.start_simulator(SimulatorScript(disconnect=True))
    outcome = own.run(lambda: driver.pay(REQUEST, SendRecorder()))
    assert (outcome.state, outcome.code) == (states.UNKNOWN, "link_lost")
    assert len(simulator.requests) == 1
    assert "may have been charged" in outcome.message


def test_refused_connection_fails_before_anything_is_sent(own):
    listening = own.reactor.listenTCP(0, SimulatorFactory(own.reactor), interface="127.0.0.1")
    closed_port = listening.getHost().port
    driver = CaisseAPTCPDriver("till-1", own.reactor, "127.0.0.1", closed_port, connect_timeout=1.0)
    recorder = SendRecorder()

    @inlineCallbacks
    def scenario():
        yield listening.stopListening()
        return (yield driver.pay(REQUEST, recorder))

    outcome = own.run(scenario)
    assert (outcome.state, outcome.code) == (states.FAILED, "terminal_unreachable")
    assert outcome.message == (
        "The payment terminal could not be reached. Check that it is switched on and connected."
    )
    assert recorder.calls == 0
    assert driver.status().as_dict()["last_error"] == "terminal_unreachable"
    assert not driver.status().up  # nothing watches a TCP terminal: down until a payment reaches it again


def test_second_payment_while_busy_is_refused_at_once(own):
    driver, simulator = own.start_simulator(SimulatorScript(outcome="never"), answer_timeout=0.3)
    recorder = SendRecorder()
    seen = {}

    @inlineCallbacks
    def scenario():
        first = driver.pay(REQUEST, SendRecorder())
        seen["second"] = yield driver.pay(PaymentRequest("pay-2", DEBIT, 1, EUR), recorder)
        seen["status"] = driver.status().as_dict()
        return (yield first)

    outcome = own.run(scenario)
    assert (seen["second"].state, seen["second"].code) == (states.FAILED, "terminal_busy")
    assert recorder.calls == 0
    assert seen["status"]["state"] == "busy" and "pay-1" in seen["status"]["detail"]
    assert outcome.code == "answer_timeout"
    assert len(simulator.requests) == 1
    assert driver.status().as_dict()["state"] == "idle"


@pytest.mark.parametrize(
    "error, code",
    [(BridgeError("disk_full", "The bridge's disk is full."), "disk_full"), (OSError("fsync"), "journal_unavailable")],
)
def test_before_send_failing_sends_nothing_and_fails(own, error, code):
    driver, simulator = own.start_simulator()

    @inlineCallbacks
    def scenario():
        outcome = yield driver.pay(REQUEST, SendRecorder(result=fail(error)))
        yield deferLater(own.reactor, 0.1, lambda: None)  # time for a stray request to arrive
        return outcome

    outcome = own.run(scenario)
    assert (outcome.state, outcome.code) == (states.FAILED, code)
    assert simulator.requests == []
    assert driver.status().as_dict()["state"] == "idle"


def test_the_payment_service_journals_accepted_and_in_progress_at_once_when_connected_and_sends_after(own, tmp_path):
    """With the real driver and sockets: the driver is started before anything is journaled; once the terminal's
    connection is up, ``accepted`` and ``in_progress`` are journaled in one write, and the request reaches the
    terminal only after it."""
    from bridge.core.journal import Journal
    from bridge.core.payments import PaymentService
    from bridge.core.registry import TerminalRegistry

    driver, simulator = own.start_simulator()
    journal = Journal.open(str(tmp_path / "journal.sqlite3"), threaded=False)
    own.add_cleanup(journal.close)
    service = PaymentService(journal, TerminalRegistry([driver]), own.reactor)
    seen: list = []  # (the write, connections, requests) at the simulator when each write is asked
    at_send: list = []

    def watch(name):
        real = getattr(journal, name)

        def watched(*args, **kwargs):
            seen.append((name, len(simulator.connections), len(simulator.requests)))
            return real(*args, **kwargs)

        setattr(journal, name, watched)

    watch("create")
    watch("create_and_move")
    watch("transition")

    def told(event):
        if event.body["payment"]["state"] == "in_progress":
            at_send.append(list(simulator.requests))

    service.subscribe(told)

    @inlineCallbacks
    def scenario():
        view = yield service.start("cl_a", "cmd-1", {"terminal": "till-1", "amount": 1234, "currency": "EUR"})
        for _ in range(200):
            record = journal.get(view["id"])
            if record.state not in ("accepted", "in_progress"):
                return record, [t["state"] for t in journal.transitions(record.id)]
            yield deferLater(own.reactor, 0.005, lambda: None)

    record, transitions = own.run(scenario)
    # connected, nothing sent, when both states were written at once; then the end, once answered
    assert seen == [("create_and_move", 1, 0), ("transition", 0, 1)]  # the end: answered, connection closed
    assert at_send == [[]]  # in_progress journaled (and told) before the request reached the terminal
    assert record.state == states.APPROVED
    assert transitions == ["accepted", "in_progress", "approved"]
    assert len(simulator.requests) == 1


def test_simulator_started_from_the_command_line_options(own, tmp_path):
    parser = argparse.ArgumentParser()
    add_simulator_arguments(parser)
    record = tmp_path / "requests.txt"
    args = parser.parse_args(["--listen", "tcp:0:interface=127.0.0.1", "--outcome", "decline", "--record", str(record)])

    @inlineCallbacks
    def scenario():
        port = yield start_simulator(own.reactor, args)
        own.add_cleanup(port.stopListening)
        driver = CaisseAPTCPDriver("till-1", own.reactor, "127.0.0.1", port.getHost().port, quiet_period=0.05)
        own.add_cleanup(driver.stop)
        return (yield driver.pay(REQUEST, SendRecorder()))

    outcome = own.run(scenario)
    assert (outcome.state, outcome.code) == (states.DECLINED, "card_declined")
    assert record.read_bytes() == encode_request(REQUEST) + b"\n"


# --- edges, with a fake reactor ---------------------------------------------------------------------------


class TestWithFakeReactor:
    def setup_method(self):
        self.reactor = MemoryReactorClock()
        self.driver = CaisseAPTCPDriver(
            "till-1", self.reactor, "192.0.2.7", 8888, connect_timeout=7.0, answer_timeout=30.0, quiet_period=0.3
        )
        self.outcomes = []
        self.recorder = SendRecorder()

    def pay(self, before_send=None):
        self.driver.pay(REQUEST, before_send or self.recorder).addCallback(self.outcomes.append)

    def connect(self):
        host, port, factory, _timeout, _bind = self.reactor.tcpClients[-1]
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = StringTransportWithDisconnection()
        transport.protocol = protocol
        protocol.makeConnection(transport)
        return protocol, transport

    def only_outcome(self):
        assert len(self.outcomes) == 1
        return self.outcomes[0]

    def test_connects_to_the_terminal_with_the_connect_timeout(self):
        self.pay()
        host, port, _factory, timeout, _bind = self.reactor.tcpClients[0]
        assert (host, port, timeout) == ("192.0.2.7", 8888, 7.0)
        assert self.outcomes == []

    def test_connect_timeout_is_failed_unreachable(self):
        self.pay()
        _host, _port, factory, _timeout, _bind = self.reactor.tcpClients[0]
        factory.clientConnectionFailed(self.reactor.connectors[0], Failure(ConnectTimeoutError()))
        assert self.only_outcome().code == "terminal_unreachable"
        assert self.recorder.calls == 0

    def test_nothing_is_written_until_before_send_fires(self):
        gate: Deferred[None] = Deferred()
        self.pay(SendRecorder(result=gate))
        _protocol, transport = self.connect()
        assert transport.value() == b""
        gate.callback(None)
        assert transport.value() == encode_request(REQUEST)

    def test_link_lost_while_waiting_for_before_send_is_failed(self):
        gate: Deferred[None] = Deferred()
        self.pay(SendRecorder(result=gate))
        _protocol, transport = self.connect()
        transport.loseConnection()
        gate.callback(None)
        assert (self.only_outcome().state, self.only_outcome().code) == (states.FAILED, "terminal_unreachable")
        assert transport.value() == b""

    def test_whole_answer_is_taken_after_the_quiet_period(self):
        self.pay()
        protocol, transport = self.connect()
        protocol.dataReceived(APPROVAL)
        self.reactor.advance(0.29)
        assert self.outcomes == []
        self.reactor.advance(0.01)
        assert self.only_outcome().state == states.APPROVED
        assert self.only_outcome().details["authorisation"] == "184117"
        assert not transport.connected
        assert self.reactor.getDelayedCalls() == []

    def test_more_bytes_in_the_quiet_period_are_appended(self):
        self.pay()
        protocol, _transport = self.connect()
        protocol.dataReceived(APPROVAL[:-21])  # ends after AC: whole, but AA is still coming
        self.reactor.advance(0.2)
        protocol.dataReceived(APPROVAL[-21:])
        self.reactor.advance(0.2)
        assert self.outcomes == []
        self.reactor.advance(0.1)
        assert self.only_outcome().details["card_masked"] == "497010######1234"

    def test_half_a_field_in_the_quiet_period_waits_for_the_rest(self):
        self.pay()
        protocol, _transport = self.connect()
        protocol.dataReceived(APPROVAL[:-21])
        protocol.dataReceived(APPROVAL[-21:-5])
        self.reactor.advance(5)
        assert self.outcomes == []
        protocol.dataReceived(APPROVAL[-5:])
        self.reactor.advance(0.3)
        assert self.only_outcome().details["card_masked"] == "497010######1234"

    def test_peer_close_after_a_whole_answer_takes_it_at_once(self):
        self.pay()
        protocol, transport = self.connect()
        protocol.dataReceived(APPROVAL + b"\r\n")
        transport.loseConnection()
        assert self.only_outcome().state == states.APPROVED
        assert self.reactor.getDelayedCalls() == []

    def test_peer_close_with_half_an_answer_is_unknown(self):
        self.pay()
        protocol, transport = self.connect()
        protocol.dataReceived(APPROVAL[:-3])
        transport.loseConnection()
        assert (self.only_outcome().state, self.only_outcome().code) == (states.UNKNOWN, "link_lost")

    def test_answer_timeout_is_unknown(self):
        self.pay()
        protocol, transport = self.connect()
        protocol.dataReceived(APPROVAL[:10])
        self.reactor.advance(29.9)
        assert self.outcomes == []
        self.reactor.advance(0.1)
        assert (self.only_outcome().state, self.only_outcome().code) == (states.UNKNOWN, "answer_timeout")
        assert not transport.connected

    def test_whole_answer_at_the_deadline_is_taken(self):
        self.pay()
        protocol, _transport = self.connect()
        self.reactor.advance(29.9)
        protocol.dataReceived(APPROVAL)
        self.reactor.advance(0.1)
        assert self.only_outcome().state == states.APPROVED

    def test_bytes_before_the_request_are_ignored(self):
        gate: Deferred[None] = Deferred()
        self.pay(SendRecorder(result=gate))
        protocol, _transport = self.connect()
        protocol.dataReceived(b"CZ0040300AE00210")
        gate.callback(None)
        self.reactor.advance(1)
        assert self.outcomes == []
        protocol.dataReceived(APPROVAL)
        self.reactor.advance(0.3)
        assert self.only_outcome().state == states.APPROVED

    def test_oversize_answer_is_malformed(self):
        self.pay()
        protocol, _transport = self.connect()
        protocol.dataReceived(b"CZ0040300AK999" + b"x" * 999)
        for index in range(70):
            protocol.dataReceived((chr(68 + index // 26) + chr(65 + index % 26)).encode() + b"999" + b"x" * 999)
            if self.outcomes:
                break
        assert (self.only_outcome().state, self.only_outcome().code) == (states.UNKNOWN, "malformed_answer")
        assert "larger than" in self.only_outcome().details["reason"]

    def test_amount_over_twelve_digits_fails_before_connecting(self):
        self.driver.pay(PaymentRequest("big", DEBIT, 10**12, EUR), self.recorder).addCallback(self.outcomes.append)
        assert (self.only_outcome().state, self.only_outcome().code) == (states.FAILED, "invalid_amount")
        assert self.reactor.tcpClients == []

    def test_before_send_raising_synchronously_is_handled(self):
        def broken():
            raise RuntimeError("journal closed")

        self.pay(broken)
        _protocol, transport = self.connect()
        assert self.only_outcome().code == "journal_unavailable"
        assert transport.value() == b"" and not transport.connected

    def test_status_shows_the_address(self):
        assert self.driver.status().as_dict() == {
            "state": "idle", "detail": "Ready.", "up": True, "address": "192.0.2.7:8888", "last_error": None,
        }

    def test_constructor_refuses_bad_identity(self):
        with pytest.raises(ValueError):
            CaisseAPTCPDriver("till", self.reactor, "192.0.2.7", pos_number="1")

    def test_the_request_is_in_the_socket_as_before_send_fires_without_waiting_for_the_reactor(self):
        gate: Deferred[None] = Deferred()
        self.pay(SendRecorder(result=gate))
        host, port, factory, _timeout, _bind = self.reactor.tcpClients[-1]
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        ours, terminal = socket.socketpair()
        self.sockets = (ours, terminal)
        ours.setblocking(False)
        transport = SocketTransport(ours)
        protocol.makeConnection(transport)
        gate.callback(None)  # nothing turns the (fake) reactor: the bytes must already be on their way
        terminal.settimeout(5)
        assert terminal.recv(4096) == encode_request(REQUEST)
        assert transport.value() == b""

    def connect_socket(self, transport_class=None):
        """Connect the last payment over a real socket pair: (protocol, transport, the terminal's end)."""
        host, port, factory, _timeout, _bind = self.reactor.tcpClients[-1]
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        ours, terminal = socket.socketpair()
        self.sockets = getattr(self, "sockets", ()) + (ours, terminal)
        ours.setblocking(False)
        transport = (transport_class or SocketTransport)(ours)
        transport.protocol = protocol
        protocol.makeConnection(transport)
        return protocol, transport, terminal

    def test_a_whole_answer_from_a_terminal_that_has_closed_is_taken_at_once(self):
        """The terminal wrote its answer and closed: the answer is taken as it is read, not a turn later when
        the close is, and no quiet period runs.  The close is left unread, and our end closed a moment later
        (after the outcome's write and event)."""
        self.pay()
        protocol, transport, terminal = self.connect_socket()
        read_request_and_close(terminal)  # as if after its answer, which the reactor read and hands on:
        protocol.dataReceived(APPROVAL)
        assert self.only_outcome().state == states.APPROVED
        assert transport.producerState == "paused" and transport.connected
        (close,) = self.reactor.getDelayedCalls()
        assert close.getTime() == pytest.approx(CLOSE_AFTER)
        self.reactor.advance(CLOSE_AFTER)
        assert not transport.connected
        assert self.reactor.getDelayedCalls() == []

    def test_a_whole_answer_from_a_terminal_still_open_waits_for_the_quiet_period(self):
        self.pay()
        protocol, _transport, _terminal = self.connect_socket()
        protocol.dataReceived(APPROVAL)
        assert self.outcomes == []
        self.reactor.advance(0.3)
        assert self.only_outcome().state == states.APPROVED

    def test_more_bytes_behind_a_whole_answer_are_waited_for_even_if_the_terminal_then_closed(self):
        self.pay()
        protocol, _transport, terminal = self.connect_socket()
        terminal.sendall(b"\r\n")  # not read yet: the answer may go on
        read_request_and_close(terminal)
        protocol.dataReceived(APPROVAL)
        assert self.outcomes == []

    def test_half_an_answer_from_a_terminal_that_has_closed_waits_for_the_close(self):
        self.pay()
        protocol, transport, terminal = self.connect_socket()
        read_request_and_close(terminal)
        protocol.dataReceived(APPROVAL[:-3])
        assert self.outcomes == []
        transport.loseConnection()
        assert (self.only_outcome().state, self.only_outcome().code) == (states.UNKNOWN, "link_lost")

    def test_the_next_payment_closes_the_last_ones_connection_and_connects_once_it_is_gone(self):
        """One connection to the terminal at a time: a payment that starts while the last one's connection is
        still open behind its outcome closes it at once, and connects once it is gone."""
        self.pay()
        protocol, transport, terminal = self.connect_socket(SlowCloseTransport)
        read_request_and_close(terminal)
        protocol.dataReceived(APPROVAL)
        assert self.only_outcome().state == states.APPROVED
        assert not transport.closing
        self.pay()
        assert transport.closing and len(self.reactor.tcpClients) == 1
        transport.finish_closing()
        assert len(self.reactor.tcpClients) == 2
        assert self.reactor.getDelayedCalls() == []  # the close a moment later was called off

    def test_stop_closes_the_last_payments_connection_and_waits_for_it(self):
        self.pay()
        protocol, transport, terminal = self.connect_socket(SlowCloseTransport)
        read_request_and_close(terminal)
        protocol.dataReceived(APPROVAL)
        stopped = []
        self.driver.stop().addCallback(stopped.append)
        assert transport.closing and stopped == []
        transport.finish_closing()
        assert stopped == [None]
        assert self.reactor.getDelayedCalls() == []
        assert self.driver.stop() is None

    def test_stop_with_no_connection_open_returns_none(self):
        assert self.driver.stop() is None
        self.pay()
        protocol, transport, _terminal = self.connect_socket()
        protocol.dataReceived(APPROVAL)
        self.reactor.advance(0.3)  # the quiet period: the terminal kept its end open, the driver closes its own
        assert self.only_outcome().state == states.APPROVED and not transport.connected
        assert self.driver.stop() is None

    def teardown_method(self):
        for sock in getattr(self, "sockets", ()):
            sock.close()


@implementer(ISystemHandle)
class SocketTransport(StringTransportWithDisconnection):
    """A transport over a real socket, as Twisted's TCP connection is (``getHandle``); ``write`` only buffers,
    as Twisted's does until the reactor's next turn."""

    def __init__(self, handle) -> None:
        super().__init__()
        self._handle = handle

    def getHandle(self):
        return self._handle


def read_request_and_close(terminal: socket.socket) -> None:
    """The terminal's end: take the request, then close (a socket closed with bytes unread resets instead)."""
    terminal.settimeout(5)
    assert terminal.recv(4096) == encode_request(REQUEST)
    terminal.close()


class SlowCloseTransport(SocketTransport):
    """Closes only when told to (``finish_closing``), as Twisted's connection does a turn or two after
    ``loseConnection``."""

    closing = False

    def loseConnection(self):
        self.closing = True

    def finish_closing(self):
        super().loseConnection()


class ShortSocket:
    """A socket that takes at most ``take`` bytes of a send, or raises ``error``."""

    def __init__(self, take: int = 0, error: OSError | None = None) -> None:
        self.take, self.error, self.sent = take, error, b""

    def send(self, data: bytes) -> int:
        if self.error is not None:
            raise self.error
        self.sent += data[:self.take]
        return min(self.take, len(data))


@pytest.mark.parametrize(
    "socket_options, in_socket",
    [
        ({"take": 26}, b"CZ0040300CJ012012345678901"),  # the socket takes part: the rest is buffered
        ({"take": 0}, b""),
        ({"error": BlockingIOError(11, "would block")}, b""),
        ({"error": ConnectionResetError(104, "reset")}, b""),  # the transport's write meets it again
    ],
)
def test_write_now_hands_the_transport_what_the_socket_did_not_take(socket_options, in_socket):
    payload = encode_request(REQUEST)
    handle = ShortSocket(**socket_options)  # a new one per run: it records what it was sent
    transport = SocketTransport(handle)
    write_now(transport, payload)
    assert handle.sent == in_socket
    assert handle.sent + transport.value() == payload


def test_peer_has_closed_only_when_the_peer_closed_and_all_it_sent_was_read():
    ours, theirs = socket.socketpair()
    try:
        ours.setblocking(False)
        transport = SocketTransport(ours)
        assert not peer_has_closed(transport)  # open, nothing sent
        theirs.sendall(b"AB")
        theirs.close()
        assert not peer_has_closed(transport)  # closed, but bytes are still to be read
        assert ours.recv(10) == b"AB"
        assert peer_has_closed(transport)
        assert peer_has_closed(transport)  # a peek: still closed
    finally:
        ours.close()
    assert not peer_has_closed(SocketTransport(ours))  # our end closed: an error, left to the reactor's read
    assert not peer_has_closed(StringTransportWithDisconnection())  # no socket


def test_write_now_writes_to_a_transport_without_a_socket():
    transport = StringTransportWithDisconnection()
    write_now(transport, b"CZ0040300")
    assert transport.value() == b"CZ0040300"


# --- configuration ----------------------------------------------------------------------------------------


def test_options_give_constructor_arguments():
    kwargs, problems = parse_tcp_options(
        {"type": "caisse-ap-tcp", "address": "192.168.1.50:9000", "answer_timeout": "120", "quiet_period": "0.5",
         "connect_timeout": "5", "pos_number": "02", "protocol_version": "0320", "cash_register_id": "247300123456"}
    )
    assert problems == []
    assert kwargs == {
        "host": "192.168.1.50", "port": 9000, "answer_timeout": 120.0, "quiet_period": 0.5, "connect_timeout": 5.0,
        "pos_number": "02", "protocol_version": "0320", "cash_register_id": "247300123456",
    }
    CaisseAPTCPDriver("till", MemoryReactorClock(), **kwargs)


@pytest.mark.parametrize(
    "address, host, port",
    [("192.168.1.50", "192.168.1.50", 8888), ("tpe.local:8889", "tpe.local", 8889), ("[fe80::1]:9000", "fe80::1", 9000),
     ("fe80::1", "fe80::1", 8888)],
)
def test_address_forms(address, host, port):
    kwargs, problems = parse_tcp_options({"address": address})
    assert problems == []
    assert (kwargs["host"], kwargs["port"]) == (host, port)


@pytest.mark.parametrize(
    "options, key",
    [
        ({}, "address"),
        ({"address": "10.0.0.1:0"}, "address"),
        ({"address": "10.0.0.1:70000"}, "address"),
        ({"address": "10.0.0.1:port"}, "address"),
        ({"address": ":8888"}, "address"),
        ({"address": "[fe80::1"}, "address"),
        ({"address": "10.0.0.1", "answer_timeout": "soon"}, "answer_timeout"),
        ({"address": "10.0.0.1", "quiet_period": "0"}, "quiet_period"),
        ({"address": "10.0.0.1", "connect_timeout": "-1"}, "connect_timeout"),
        ({"address": "10.0.0.1", "connect_timeout": "inf"}, "connect_timeout"),
        ({"address": "10.0.0.1", "pos_number": "1"}, "pos_number"),
        ({"address": "10.0.0.1", "protocol_version": "3.00"}, "protocol_version"),
        ({"address": "10.0.0.1", "cash_register_id": "12345678901"}, "cash_register_id"),
        ({"address": "10.0.0.1", "adress": "10.0.0.2"}, "adress"),
    ],
)
def test_bad_options_are_named_in_words(options, key):
    kwargs, problems = parse_tcp_options(options)
    assert [problem_key for problem_key, _words in problems] == [key]
    assert all(words and " " in words for _key, words in problems)
    assert key not in kwargs


def test_ipv6_status_address_is_bracketed():
    driver = CaisseAPTCPDriver("till", MemoryReactorClock(), "fe80::1", 8888)
    assert driver.status().as_dict()["address"] == "[fe80::1]:8888"
