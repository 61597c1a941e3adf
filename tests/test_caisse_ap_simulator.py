"""The Caisse-AP terminal simulator answers like a real terminal, as scripted."""

from __future__ import annotations

import argparse

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport

from bridge.terminals.caisse_ap.codec import encode_fields, parse_message
from bridge.cli.simulators import add_simulator_arguments, script_from_arguments, start_simulator
from bridge.terminals.caisse_ap.simulator import GARBAGE, SimulatorFactory, SimulatorScript, answer_fields

REQUEST = [("CZ", "0300"), ("CJ", "012345678901"), ("CA", "01"), ("CE", "978"), ("CD", "0"), ("CB", "1234")]
REQUEST_BYTES = b"CZ0040300CJ012012345678901CA00201CE003978CD0010CB0041234"


def request(**changes: str | None) -> list[tuple[str, str]]:
    fields = dict(REQUEST)
    fields.update(changes)
    return [(tag, value) for tag, value in fields.items() if value is not None]


def answered(fields: list[tuple[str, str]] | None, script: SimulatorScript = SimulatorScript()) -> dict[str, str]:
    result = answer_fields(fields if fields is not None else REQUEST, script)
    assert result is not None
    return dict(result)


# --- what it answers (pure) -------------------------------------------------------------------------------


@pytest.mark.parametrize("tag", ["CZ", "CJ", "CA", "CB", "CD", "CE"])
def test_missing_mandatory_tag_is_a_format_error(tag):
    reply = answered(request(**{tag: None}))
    assert (reply["AE"], reply["AF"]) == ("01", "09")


@pytest.mark.parametrize(
    "changes", [{"CB": "5"}, {"CB": "12.34"}, {"CB": "1" * 13}, {"CA": "1"}, {"CE": "97"}, {"CZ": "300"}]
)
def test_badly_formed_mandatory_tag_is_a_format_error(changes):
    reply = answered(request(**changes))
    assert (reply["AE"], reply["AF"]) == ("01", "09")


@pytest.mark.parametrize("action", ["2", "5", "I"])
def test_unknown_action_is_refused_with_af12(action):
    reply = answered(request(CD=action))
    assert (reply["AE"], reply["AF"]) == ("01", "12")


def test_unsupported_currency_is_refused_with_af13():
    reply = answered(request(CE="999"))
    assert (reply["AE"], reply["AF"]) == ("01", "13")


@pytest.mark.parametrize("numeric", ["978", "953", "840", "826"])
def test_supported_currencies_are_approved(numeric):
    assert answered(request(CE=numeric))["AE"] == "10"


def test_approval_echoes_every_request_tag_and_adds_card_details():
    fields = request(BA="0", CF="order-42")
    reply = answered(fields)
    for tag, value in fields:
        assert reply[tag] == value
    assert reply["AE"] == "10"
    assert reply["AA"] == "497010######1234"
    assert {"CC", "CI", "AC", "AI"} <= set(reply)


def test_refund_is_approved():
    assert answered(request(CD="1"))["AE"] == "10"


def test_decline_uses_the_scripted_af():
    reply = answered(None, SimulatorScript(outcome="decline", af="05"))
    assert (reply["AE"], reply["AF"]) == ("01", "05")


def test_abandon_is_af11_with_zero_amount_like_an_ingenicos_red_button():
    reply = answered(None, SimulatorScript(outcome="abandon"))
    assert (reply["AE"], reply["AF"], reply["CB"]) == ("01", "11", "0000")


@pytest.mark.parametrize("outcome", ["decline", "abandon"])
@pytest.mark.parametrize("vendor, refused_amount, cb", [
    ("ingenico", None, "0000"),  # assumed for a decline too: nothing was debited (caisse-ap-answers.md)
    ("nepting", None, "1234"),  # a Nepting refusal echoes the requested amount [spec]
    ("payxpert", None, "1234"),  # PayXpert copies CB from the request [spec]
    ("ingenico", "echo", "1234"),
    ("nepting", "zeros", "0000"),
])
def test_the_amount_of_a_refusal_follows_the_vendor_profile(outcome, vendor, refused_amount, cb):
    reply = answered(None, SimulatorScript(outcome=outcome, vendor=vendor, refused_amount=refused_amount))
    assert (reply["AE"], reply["CB"]) == ("01", cb)


def test_an_unknown_vendor_or_refused_amount_is_refused():
    with pytest.raises(ValueError, match="vendor"):
        SimulatorScript(vendor="acme")
    with pytest.raises(ValueError, match="refused_amount"):
        SimulatorScript(refused_amount="half")


@pytest.mark.parametrize("cb", ["5", "0"])
def test_a_one_digit_amount_is_a_format_error_unless_lenient(cb):
    """OCA's module sends CB0015 for 0.05; the specification says CB is 2 to 12 digits."""
    strict = answered(request(CB=cb))
    assert (strict["AE"], strict["AF"]) == ("01", "09")
    assert not {"AA", "AC", "CI"} & set(strict)  # no card data in a format error
    lenient = answered(request(CB=cb), SimulatorScript(lenient_amount=True))
    assert (lenient["AE"], lenient["CB"]) == ("10", cb)


def test_lenient_still_refuses_thirteen_digits():
    reply = answered(request(CB="1" * 13), SimulatorScript(lenient_amount=True))
    assert (reply["AE"], reply["AF"]) == ("01", "09")


def test_never_stays_silent():
    assert answer_fields(REQUEST, SimulatorScript(outcome="never")) is None


@pytest.mark.parametrize("script, fields", [(SimulatorScript(cheque=True), REQUEST), (SimulatorScript(), request(CC="00C"))])
def test_cheque_answer_has_no_card_tags(script, fields):
    reply = answered(fields, script)
    assert (reply["AE"], reply["CC"]) == ("10", "00C")
    assert not {"AA", "AB", "AI", "CI"} & set(reply)


def test_immediate_mode_answers_request_taken():
    assert answered(request(BA="1"))["AE"] == "11"


@pytest.mark.parametrize(
    "options", [{"outcome": "maybe"}, {"af": "4"}, {"delay": -1.0}, {"split": 0}]
)
def test_script_refuses_nonsense(options):
    with pytest.raises(ValueError):
        SimulatorScript(**options)


# --- how it talks (protocol with a fake clock) ------------------------------------------------------------


def connect(script: SimulatorScript = SimulatorScript(), record_path: str | None = None):
    clock = Clock()
    factory = SimulatorFactory(clock, script, record_path=record_path)
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
    transport = StringTransport()
    protocol.makeConnection(transport)
    return clock, factory, protocol, transport


def test_request_in_pieces_is_answered_once_whole():
    clock, factory, protocol, transport = connect()
    protocol.dataReceived(REQUEST_BYTES[:20])
    clock.advance(1)
    assert transport.value() == b"" and factory.requests == []
    protocol.dataReceived(REQUEST_BYTES[20:])
    clock.advance(0)
    assert factory.requests == [REQUEST_BYTES]
    assert dict(parse_message(transport.value()))["AE"] == "10"
    assert transport.disconnecting


def test_trailing_line_end_is_tolerated_and_not_recorded():
    clock, factory, protocol, transport = connect()
    protocol.dataReceived(REQUEST_BYTES + b"\r\n")
    clock.advance(0)
    assert factory.requests == [REQUEST_BYTES]
    assert dict(parse_message(transport.value()))["AE"] == "10"


def test_answer_waits_for_the_scripted_delay():
    clock, _factory, protocol, transport = connect(SimulatorScript(delay=2.0))
    protocol.dataReceived(REQUEST_BYTES)
    clock.advance(1.9)
    assert transport.value() == b""
    clock.advance(0.1)
    assert dict(parse_message(transport.value()))["AE"] == "10"


def test_split_answer_is_written_in_pieces():
    clock, _factory, protocol, transport = connect(SimulatorScript(split=3, split_gap=0.5))
    protocol.dataReceived(REQUEST_BYTES)
    sizes = []
    for _ in range(2):
        clock.advance(0)
        sizes.append(len(transport.value()))
        assert not transport.disconnecting
        clock.advance(0.5)
    sizes.append(len(transport.value()))
    assert 0 < sizes[0] < sizes[1] < sizes[2]
    assert dict(parse_message(transport.value()))["AE"] == "10"
    assert transport.disconnecting


def test_keep_open_does_not_close_after_answering():
    clock, _factory, protocol, transport = connect(SimulatorScript(keep_open=True))
    protocol.dataReceived(REQUEST_BYTES)
    clock.advance(1)
    assert transport.value() and not transport.disconnecting


def test_garbage_answer_is_not_a_message():
    clock, _factory, protocol, transport = connect(SimulatorScript(garbage=True))
    protocol.dataReceived(REQUEST_BYTES)
    clock.advance(0)
    assert transport.value() == GARBAGE


def test_disconnect_drops_the_line_without_answering():
    clock, factory, protocol, transport = connect(SimulatorScript(disconnect=True))
    protocol.dataReceived(REQUEST_BYTES)
    clock.advance(0)
    assert factory.requests == [REQUEST_BYTES]
    assert transport.value() == b"" and transport.disconnecting


def test_never_keeps_the_line_open_and_silent():
    clock, _factory, protocol, transport = connect(SimulatorScript(outcome="never"))
    protocol.dataReceived(REQUEST_BYTES)
    clock.advance(600)
    assert transport.value() == b"" and not transport.disconnecting


def test_malformed_request_gets_af09_and_is_not_recorded():
    clock, factory, protocol, transport = connect()
    protocol.dataReceived(b"CZ0040300CB0x1")
    clock.advance(0)
    reply = dict(parse_message(transport.value()))
    assert (reply["AE"], reply["AF"]) == ("01", "09")
    assert factory.requests == []


def test_bytes_after_the_request_are_ignored():
    clock, factory, protocol, transport = connect(SimulatorScript(keep_open=True))
    protocol.dataReceived(REQUEST_BYTES)
    clock.advance(0)
    first = transport.value()
    protocol.dataReceived(REQUEST_BYTES)
    clock.advance(0)
    assert transport.value() == first and len(factory.requests) == 1


def test_pending_answer_is_cancelled_when_the_line_drops():
    clock, _factory, protocol, transport = connect(SimulatorScript(delay=5))
    protocol.dataReceived(REQUEST_BYTES)
    protocol.connectionLost(None)
    assert clock.getDelayedCalls() == []


def test_record_path_gets_one_line_per_request(tmp_path):
    path = tmp_path / "requests.txt"
    for _ in range(2):
        clock, _factory, protocol, _transport = connect(record_path=str(path))
        protocol.dataReceived(REQUEST_BYTES)
    assert path.read_bytes() == REQUEST_BYTES + b"\n" + REQUEST_BYTES + b"\n"


def test_request_encoded_by_the_codec_is_what_the_simulator_expects():
    assert encode_fields(REQUEST) == REQUEST_BYTES


# --- command line -----------------------------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="simulate")
    add_simulator_arguments(parser)
    return parser.parse_args(list(argv))


def test_command_line_defaults_approve_on_port_8888():
    args = parse()
    assert args.listen == "tcp:8888"
    assert script_from_arguments(args) == SimulatorScript()


def test_command_line_builds_the_script():
    args = parse("--outcome", "decline", "--af", "05", "--delay", "1.5", "--split", "3", "--keep-open",
                 "--cheque", "--record", "/tmp/x")
    assert script_from_arguments(args) == SimulatorScript(
        outcome="decline", af="05", delay=1.5, split=3, keep_open=True, cheque=True
    )
    assert args.record == "/tmp/x"


@pytest.mark.parametrize(
    "argv", [["--af", "4"], ["--delay", "-1"], ["--delay", "nan"], ["--split", "0"], ["--outcome", "maybe"]]
)
def test_command_line_refuses_bad_values(argv, capsys):
    with pytest.raises(SystemExit):
        parse(*argv)
    assert "error" in capsys.readouterr().err


def test_start_simulator_listens_on_the_endpoint_with_the_script(tmp_path):
    reactor = MemoryReactor()
    args = parse("--listen", "tcp:9999:interface=127.0.0.1", "--outcome", "abandon", "--record", str(tmp_path / "r"))
    ports = []
    start_simulator(reactor, args).addCallback(ports.append)
    assert len(ports) == 1
    port_number, factory, _backlog, interface = reactor.tcpServers[0]
    assert (port_number, interface) == (9999, "127.0.0.1")
    assert factory.script == SimulatorScript(outcome="abandon")
    assert factory.record_path == str(tmp_path / "r")
