"""The journald observer, through an injected send function that records calls."""

import io
import sys
import tempfile

import pytest
from twisted.logger import FileLogObserver, Logger, LogLevel

from bridge.service.journald import JournaldObserver, make_observer


class RecordingSend:
    def __init__(self):
        self.calls = []

    def __call__(self, **fields):
        self.calls.append(fields)

    @property
    def last(self) -> dict:
        return self.calls[-1]


@pytest.fixture
def send():
    return RecordingSend()


@pytest.fixture
def log(send):
    return Logger(namespace="bridge.core.payments", observer=JournaldObserver(send=send))


def test_payment_line_carries_its_fields(send, log):
    log.info(
        "Payment {payment_id} on {terminal}: {state}",
        payment_id="p-42",
        terminal="till-1",
        state="approved",
        amount=1250,
        currency="EUR",
        client="odoo-cloud",
        code="00",
    )
    assert send.last == {
        "MESSAGE": "Payment p-42 on till-1: approved",
        "PRIORITY": "6",
        "SYSLOG_IDENTIFIER": "terminal-bridge",
        "LOG_NAMESPACE": "bridge.core.payments",
        "PAYMENT_ID": "p-42",
        "TERMINAL": "till-1",
        "STATE": "approved",
        "AMOUNT": "1250",
        "CURRENCY": "EUR",
        "CLIENT": "odoo-cloud",
        "CODE": "00",
    }


def test_only_fields_present_are_sent(send, log):
    log.info("Terminal {terminal} connected", terminal="till-2", payment_id=None)
    assert "TERMINAL" in send.last
    assert not {"PAYMENT_ID", "STATE", "AMOUNT", "CURRENCY", "CLIENT", "CODE"} & set(send.last)


@pytest.mark.parametrize(
    "level, priority",
    [
        (LogLevel.debug, "7"),
        (LogLevel.info, "6"),
        (LogLevel.warn, "4"),
        (LogLevel.error, "3"),
        (LogLevel.critical, "2"),
    ],
)
def test_priority_follows_the_level(send, log, level, priority):
    log.emit(level, "something")
    assert send.last["PRIORITY"] == priority


def test_secrets_in_an_event_are_never_sent(send, log):
    log.info(
        "Stripe reader registered",
        api_key="sk_live_secret",
        secret="s3cr3t",
        password="hunter2",
        signature="abcdef",
        token="t0k3n",
    )
    sent = " ".join(f"{name}={value}" for name, value in send.last.items())
    for secret in ("sk_live_secret", "s3cr3t", "hunter2", "abcdef", "t0k3n"):
        assert secret not in sent


def test_field_names_that_journald_refuses_or_that_name_secrets_are_dropped(send):
    fields = {
        "terminal": "TERMINAL",
        "api_key": "API_KEY",
        "hmac_sig": "HMAC_SIG",
        "password": "PASSWORD",
        "unit": "_SYSTEMD_UNIT",
        "lower": "lower",
        "dash": "A-B",
    }
    log = Logger(observer=JournaldObserver(send=send, fields=fields))
    log.info("x", terminal="t", api_key="k", hmac_sig="s", password="p", unit="u", lower="l", dash="d")
    assert set(send.last) == {"MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "LOG_NAMESPACE", "TERMINAL"}


def test_a_failure_sends_message_and_traceback_as_one_entry(send, log):
    try:
        raise ConnectionRefusedError("till-1 refused the connection")
    except ConnectionRefusedError:
        log.failure("Payment {payment_id} failed", payment_id="p-7")
    assert len(send.calls) == 1
    message = send.last["MESSAGE"]
    assert message.startswith("Payment p-7 failed\n")
    assert "Traceback" in message
    assert "till-1 refused the connection" in message
    assert send.last["PRIORITY"] == "2"
    assert send.last["PAYMENT_ID"] == "p-7"


def test_a_failing_send_falls_back_to_text():
    def broken(**fields):
        raise OSError("journald is restarting")

    stream = io.StringIO()
    log = Logger(observer=JournaldObserver(send=broken, fallback=FileLogObserver(stream, lambda e: "fallback\n")))
    log.info("hello")
    assert stream.getvalue() == "fallback\n"


def test_default_send_sends_only_the_event_fields(monkeypatch):
    journal = pytest.importorskip("systemd.journal", reason="python3-systemd is not installed")
    lines = []
    monkeypatch.setattr(journal, "sendv", lambda *args: lines.extend(args))
    Logger(observer=JournaldObserver()).warn("Terminal {terminal} is slow", terminal="till-1")
    assert "MESSAGE=Terminal till-1 is slow" in lines
    assert "PRIORITY=4" in lines
    assert "TERMINAL=till-1" in lines
    assert not [line for line in lines if line.startswith("CODE_")]


def test_make_observer_writes_text_outside_systemd():
    stream = io.StringIO()
    observer = make_observer(environ={}, stream=stream)
    Logger(observer=observer).info("Listening on {port}", port=8443)
    assert not isinstance(observer, JournaldObserver)
    assert "Listening on 8443" in stream.getvalue()


def test_make_observer_chooses_journald_under_systemd():
    pytest.importorskip("systemd.journal", reason="python3-systemd is not installed")
    observer = make_observer(environ={"JOURNAL_STREAM": "8:12345"}, stream=io.StringIO())
    assert isinstance(observer, JournaldObserver)


def test_make_observer_writes_text_when_python3_systemd_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "systemd", None)
    monkeypatch.setitem(sys.modules, "systemd.journal", None)
    stream = io.StringIO()
    observer = make_observer(environ={"JOURNAL_STREAM": "8:12345"}, stream=stream)
    assert not isinstance(observer, JournaldObserver)


def test_make_observer_writes_text_when_output_is_not_the_journal():
    # JOURNAL_STREAM inherited by a process whose stdout was redirected elsewhere.
    with tempfile.TemporaryFile("w") as stream:
        observer = make_observer(environ={"JOURNAL_STREAM": "1:1"}, stream=stream)
    assert not isinstance(observer, JournaldObserver)


@pytest.mark.parametrize("level, shown", [("info", False), ("debug", True)])
def test_autobahn_lines_below_the_level_are_not_even_built(level, shown):
    # Our WebSocket protocols must keep autobahn's txaio logger (whose calls below the configured level are
    # no-ops); a ``log`` attribute of ours would turn every autobahn debug line into an event filtered out later.
    import txaio
    from twisted.logger import globalLogPublisher

    from bridge.api.client import ClientProtocol
    from bridge.api.websocket import CommandProtocol
    from bridge.uplink.bus import BusProtocol

    seen: list = []
    globalLogPublisher.addObserver(seen.append)
    try:
        txaio.set_global_log_level(level)
        for protocol in (CommandProtocol, ClientProtocol, BusProtocol):
            assert not isinstance(protocol.log, Logger), protocol
            protocol.log.debug("autobahn sent {count} bytes", count=3)
    finally:
        txaio.set_global_log_level("info")
        globalLogPublisher.removeObserver(seen.append)
    assert len([e for e in seen if e.get("count") == 3]) == (3 if shown else 0)
