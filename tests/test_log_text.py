"""The bridge's log text is exactly what Twisted's own formatting functions make of the same event."""

from __future__ import annotations

import io
import time

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.logger import LogLevel, Logger, formatEvent, formatEventAsClassicLogText, formatTime
from twisted.python.failure import Failure

from bridge.service import log_text
from bridge.service.journald import JournaldObserver, make_observer

NAMES = ["payment_id", "terminal", "state", "amount", "log_namespace", "value"]
VALUES = st.one_of(st.none(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20),
                   st.booleans(), st.lists(st.integers(), max_size=3),
                   st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
FIELDS = st.one_of(
    st.sampled_from(NAMES).map(lambda n: "{" + n + "}"),
    st.sampled_from(NAMES).map(lambda n: "{" + n + "!r}"),
    st.sampled_from(NAMES).map(lambda n: "{" + n + ":>8}"),
    st.sampled_from(NAMES).map(lambda n: "{" + n + "[0]}"),
    st.sampled_from(NAMES).map(lambda n: "{" + n + ".real}"),
    st.sampled_from(NAMES).map(lambda n: "{" + n + "()}"),  # Twisted calls it: only Twisted formats these
    st.sampled_from(["{missing}", "{", "}", "{{", "}}", "{0}", "{}", "{payment_id:d}"]),  # refused, escaped
    st.text(alphabet=st.characters(blacklist_characters="{}"), max_size=12),
)
TIMES = st.one_of(st.none(), st.floats(min_value=0, max_value=4e9),
                  st.integers(min_value=0, max_value=4_000_000_000).map(lambda s: s - 1e-7),
                  st.integers(min_value=0, max_value=4_000_000_000).map(lambda s: s + 0.9999996))


@st.composite
def events(draw):
    event = {name: draw(VALUES) for name in draw(st.lists(st.sampled_from(NAMES), unique=True))}
    fmt = draw(st.one_of(st.none(), st.lists(FIELDS, max_size=5).map("".join), st.binary(max_size=5)))
    if fmt is not None or draw(st.booleans()):
        event["log_format"] = fmt
    event["log_time"] = draw(TIMES)
    if draw(st.booleans()):
        event["log_level"] = draw(st.sampled_from(list(LogLevel.iterconstants())))
    if draw(st.booleans()):
        event["log_namespace"] = draw(st.text(max_size=10))
    if draw(st.booleans()):
        event["log_system"] = draw(st.one_of(st.text(max_size=10), st.integers()))
    if draw(st.booleans()):
        event["value"] = lambda: "called"
    return event


@settings(max_examples=2000, deadline=None)
@given(events())
def test_the_message_and_the_line_are_twisteds(event):
    assert log_text.format_message(dict(event)) == formatEvent(dict(event))
    assert log_text.classic_text(dict(event)) == formatEventAsClassicLogText(dict(event))


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=0, max_value=4e9))
def test_the_timestamp_is_twisteds_whatever_came_before(when):
    assert log_text._time_text(when) == formatTime(when)
    assert log_text._time_text(when + 0.25) == formatTime(when + 0.25)


def test_an_event_with_a_failure_is_twisteds_with_its_traceback():
    try:
        1 / 0
    except ZeroDivisionError:
        failure = Failure()
    event = {"log_format": "Payment {payment_id} failed", "payment_id": "pay_1", "log_failure": failure,
             "log_time": time.time(), "log_level": LogLevel.error, "log_namespace": "bridge"}
    line = log_text.classic_text(event)
    assert line == formatEventAsClassicLogText(event)
    assert "ZeroDivisionError" in line and "Payment pay_1 failed" in line


def test_the_daemons_text_observer_writes_the_payment_line_as_before():
    stream, seen = io.StringIO(), []
    observer = make_observer({}, stream)
    log = Logger(namespace="bridge.core.payments.PaymentService", observer=lambda e: (seen.append(e), observer(e)))
    log.info("Payment {payment_id} on {terminal}: {state} ({amount} {currency}){reason}", payment_id="pay_1",
             terminal="till-1", state="approved", amount=1234, currency="EUR", reason=" - Approved.")
    written = stream.getvalue()
    assert written == formatEventAsClassicLogText(seen[0])
    assert written.endswith(" [bridge.core.payments.PaymentService#info] Payment pay_1 on till-1: approved "
                            "(1234 EUR) - Approved.\n")


def test_journald_gets_the_same_message():
    sent = []
    observer = JournaldObserver(send=lambda **fields: sent.append(fields))
    observer({"log_format": "Payment {payment_id}: {state}", "payment_id": "pay_1", "state": "approved",
              "log_level": LogLevel.info, "log_time": time.time()})
    assert sent[0]["MESSAGE"] == "Payment pay_1: approved"
