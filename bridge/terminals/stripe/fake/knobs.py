"""What a test turns on the fake: a reader's behaviour, failures to inject, and the ``/_fake/...`` routes that
turn them from another process (``terminal-bridge simulate stripe``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from bridge.terminals.stripe.fake.wire import ApiError

if TYPE_CHECKING:
    from bridge.terminals.stripe.fake.model import FakeStripe


@dataclass
class ReaderKnobs:
    busy: int = 0  # answer terminal_reader_busy to this many commands
    timeout: int = 0  # answer terminal_reader_timeout to this many commands, without doing them
    timeout_false_negative: int = 0  # do the command, then answer terminal_reader_timeout, this many times
    lose_completion: bool = False  # the action stays in_progress after the card (the missing-webhook case)
    auth_latency: float = 0.0  # seconds the authorisation takes (cancel_action is busy meanwhile)
    auto_present: Optional[str] = None  # a test card presented automatically after process_payment_intent ...
    auto_present_delay: float = 1.0  # ... this many seconds later
    error: Optional[str] = None  # answer the next command with this Terminal error code (terminal_reader_...)


@dataclass
class FailureKnob:
    count: int
    status: int
    match: Optional[str]
    drop: bool = False


def handle_knob(fake: "FakeStripe", path: str, body: bytes) -> tuple[int, Any]:
    """``POST /_fake/...`` with a JSON body: the knobs of :class:`FakeStripe`, from another process."""
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        return 400, {"error": "the body must be JSON"}
    parts = path.strip("/").split("/")
    if parts[:2] == ["_fake", "readers"] and len(parts) == 3 and parts[2] in fake.readers:
        reader_id = parts[2]
        if "status" in data:
            fake.set_online(reader_id, data.pop("status") == "online")
        knobs = fake.reader_knobs(reader_id)
        for name, value in data.items():
            if not hasattr(knobs, name):
                return 400, {"error": f"unknown knob {name}"}
            setattr(knobs, name, value)
        return 200, {"reader": reader_id, "knobs": knobs.__dict__}
    if parts == ["_fake", "customer_cancel"] and data.get("reader") in fake.readers:
        try:
            return 200, fake.customer_cancel(data["reader"])
        except ApiError as error:
            return error.status, {"error": error.body}
    if parts == ["_fake", "fail_action"] and data.get("reader") in fake.readers:
        try:
            return 200, fake.fail_action(data["reader"], str(data.get("code", "terminal_reader_hardware_fault")))
        except ApiError as error:
            return error.status, {"error": error.body}
    if parts == ["_fake", "fail_next"]:
        fake.fail_next(int(data.get("count", 1)), int(data.get("status", 500)), data.get("match"))
        return 200, {"ok": True}
    if parts == ["_fake", "fail_inside"]:
        fake.fail_inside(int(data.get("count", 1)), int(data.get("status", 500)), data.get("match"),
                         bool(data.get("after_commit", False)))
        return 200, {"ok": True}
    if parts == ["_fake", "slow"]:
        fake.slow = float(data.get("seconds", 0))
        return 200, {"ok": True}
    if parts == ["_fake", "present"] and data.get("reader") in fake.readers:
        try:
            return 200, fake.present(data["reader"], data.get("card", "4242424242424242"))
        except ApiError as error:
            return error.status, {"error": error.body}
    return 404, {"error": "unknown knob"}
