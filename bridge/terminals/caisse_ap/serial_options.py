"""The settings of a ``caisse-ap-serial`` terminal section and their checks.

Apart from the driver (bridge/terminals/caisse_ap/serial.py) so that checking a configuration, and running a
bridge without serial terminals, does not import pyserial and the serial link layer.
"""

from __future__ import annotations

from typing import Any, Mapping

from bridge.terminals.caisse_ap.codec import IDENTITY_FIELDS
from bridge.terminals.caisse_ap.options import parse_timings_and_identity, positive_number

PROTOCOL_TLV = "caisse-ap"
PROTOCOL_V2 = "concert-v2"
PROTOCOLS = (PROTOCOL_TLV, PROTOCOL_V2)

#: Line settings the driver knows (its LINES maps them to pyserial's data bits, parity and stop bits).
LINE_NAMES = ("7E1", "8N1")
BAUDRATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)

DEFAULT_BAUDRATE = 9600
DEFAULT_LINE = "7E1"
DEFAULT_ANSWER_TIMEOUT = 180.0
DEFAULT_HEALTH_INTERVAL = 60.0


_TIMING_OPTIONS = ("answer_timeout", "ack_timeout")


def parse_serial_options(options: Mapping[str, str]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Check a terminal's configuration section: ``(constructor keyword arguments, [(key, problem)])``.

    The keyword arguments are those of :class:`CaisseAPSerialDriver` besides ``name`` and ``reactor``.
    """
    kwargs: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    known = {"type", "device", "baudrate", "line", "protocol", "health_interval", *_TIMING_OPTIONS,
             *IDENTITY_FIELDS}
    for key in options:
        if key not in known:
            problems.append((key, f"is not a setting of a Caisse-AP serial terminal (known: {', '.join(sorted(known))})"))
    device = options.get("device", "").strip()
    if not device:
        problems.append(("device", "is missing: give the terminal's device, best a /dev/serial/by-id/... path"))
    elif not device.startswith("/"):
        problems.append(("device", f"{device!r} is not a device path such as /dev/serial/by-id/usb-... or "
                                   "/dev/ttyACM0"))
    else:
        kwargs["device"] = device
    if "baudrate" in options:
        text = options["baudrate"].strip()
        if text.isdigit() and int(text) in BAUDRATES:
            kwargs["baudrate"] = int(text)
        else:
            problems.append(("baudrate", f"{text!r} is not one of {', '.join(map(str, BAUDRATES))}"))
    if "line" in options:
        text = options["line"].strip().upper()
        if text in LINE_NAMES:
            kwargs["line"] = text
        else:
            problems.append(("line", f"{options['line']!r} is not 7E1 (7 data bits, even parity, 1 stop bit) or "
                                     "8N1 (8 data bits, no parity, 1 stop bit)"))
    if "protocol" in options:
        text = options["protocol"].strip().lower()
        if text in PROTOCOLS:
            kwargs["protocol"] = text
        else:
            problems.append(("protocol", f"{options['protocol']!r} is not caisse-ap (Concert V3 TLV) or "
                                         "concert-v2 (older fixed-width messages)"))
    parse_timings_and_identity(options, _TIMING_OPTIONS, kwargs, problems)
    if "health_interval" in options:
        text = options["health_interval"].strip()
        try:
            kwargs["health_interval"] = 0.0 if text in ("0", "0.0") else positive_number(text)
        except ValueError:
            problems.append(("health_interval", f"{text!r} is not a number of seconds (0 turns the check off)"))
    return kwargs, problems
