"""The bridge's test doubles, in one place (for its own tests, the demo, the benchmark and integrators' tests).

- :class:`~bridge.testing.recording.RecordingDriver`: a terminal driver that records each request and ends the
  payment when the test says so (``finish``);
- :class:`~bridge.terminals.stripe.fake.FakeStripe`: Stripe's API (PaymentIntents, readers, refunds) over real
  HTTP, with knobs for the reader's behaviour and Stripe's failures;
- the Caisse-AP simulators: :class:`~bridge.terminals.caisse_ap.simulator.SimulatorFactory` (TCP, scripted by a
  :class:`~bridge.terminals.caisse_ap.simulator.SimulatorScript`) and
  :class:`~bridge.terminals.caisse_ap.serial_simulator.SerialTerminal` (a pty, Caisse-AP or Concert V2).

The fake and the simulators are imported on first use: they bring twisted.web and pyserial along.
"""

from __future__ import annotations

from typing import Any

from bridge.testing.recording import RecordingDriver

_ELSEWHERE = {
    "FakeStripe": "bridge.terminals.stripe.fake",
    "SimulatorFactory": "bridge.terminals.caisse_ap.simulator",
    "SimulatorScript": "bridge.terminals.caisse_ap.simulator",
    "SerialTerminal": "bridge.terminals.caisse_ap.serial_simulator",
}

__all__ = ["RecordingDriver", *_ELSEWHERE]


def __getattr__(name: str) -> Any:
    if name in _ELSEWHERE:
        import importlib

        return getattr(importlib.import_module(_ELSEWHERE[name]), name)
    raise AttributeError(f"module 'bridge.testing' has no attribute {name!r}")
