"""The command lines of the simulated terminals and the fake Stripe API: their options and how each starts.

`terminal-bridge simulate caisse-ap [--serial]` and `terminal-bridge simulate stripe` (and the demo, the
benchmark, the tests) read their options here; the simulators themselves (:mod:`bridge.terminals.caisse_ap.simulator`,
:mod:`bridge.terminals.caisse_ap.serial_simulator`, :mod:`bridge.terminals.stripe.fake`) take plain values and know
nothing of argparse.
"""

from __future__ import annotations

import argparse
import math
import re
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort

from bridge.core.reactor_types import Reactor
from bridge.terminals.caisse_ap.serial_options import PROTOCOL_TLV, PROTOCOLS
from bridge.terminals.caisse_ap.simulator import (APPROVE, DEFAULT_VENDOR, OUTCOMES, REFUSED_AMOUNTS, VENDORS,
                                                  SimulatorFactory, SimulatorScript)

if TYPE_CHECKING:
    from bridge.terminals.caisse_ap.serial_simulator import LinkFaults, SerialTerminal
    from bridge.terminals.stripe.fake import FakeStripe


# --- Caisse-AP over TCP: `simulate caisse-ap` ----------------------------------------------------------------

def _af(text: str) -> str:
    if not re.fullmatch(r"\d\d", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a two-digit AF code")
    return text


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds of at least 0")
    return value


def _pieces(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def add_simulator_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``terminal-bridge simulate caisse-ap``."""
    parser.add_argument(
        "--listen", default="tcp:8888", metavar="ENDPOINT",
        help="where to listen, as a Twisted endpoint string (default: tcp:8888; e.g. tcp:8888:interface=127.0.0.1)",
    )
    parser.add_argument(
        "--outcome", choices=OUTCOMES, default=APPROVE,
        help="how every payment ends: approve, decline (with --af), abandon (customer pressed the red button, "
        "AF=11) or never (keep silent until the till gives up) (default: approve)",
    )
    parser.add_argument("--af", type=_af, default="04", help="AF code of a decline: 04 refused, 05 forbidden, "
                        "02 call the issuer, 08 input timeout... (default: 04)")
    parser.add_argument("--delay", type=_seconds, default=0.0, metavar="SECONDS",
                        help="wait this long before answering, like a customer typing a PIN (default: 0)")
    parser.add_argument("--split", type=_pieces, default=1, metavar="N",
                        help="write the answer in N pieces, 20 ms apart (default: 1)")
    parser.add_argument("--keep-open", action="store_true",
                        help="keep the connection open after answering (default: close it)")
    parser.add_argument("--garbage", action="store_true", help="answer with bytes that are not a Caisse-AP message")
    parser.add_argument("--cheque", action="store_true", help="answer as a cheque printer (CC=00C, no card details)")
    parser.add_argument("--disconnect", action="store_true",
                        help="drop the connection after receiving the request, without answering")
    parser.add_argument("--record", metavar="FILE", help="append every request received to FILE, one per line")
    parser.add_argument("--vendor", choices=tuple(VENDORS), default=DEFAULT_VENDOR,
                        help="behave like this vendor's terminals where they differ: ingenico puts zeros in the "
                             "amount of a refusal or an abandon, nepting and payxpert echo the request's "
                             "(default: %(default)s)")
    parser.add_argument("--refused-amount", choices=REFUSED_AMOUNTS,
                        help="the amount of an answer that is not an approval, instead of the vendor's: zeros or "
                             "echo (e.g. echo for pyTeliumManager, which refuses a zero amount)")
    parser.add_argument("--lenient-amount", action="store_true",
                        help="accept a one-digit amount (CB0015 for 0.05, as some tills send it), as some "
                             "terminals do; by default it is a format error (AF=09): CB is 2 to 12 digits")


def script_from_arguments(args: argparse.Namespace) -> SimulatorScript:
    return SimulatorScript(
        outcome=args.outcome, af=args.af, delay=args.delay, split=args.split, keep_open=args.keep_open,
        garbage=args.garbage, cheque=args.cheque, disconnect=args.disconnect, vendor=args.vendor,
        refused_amount=args.refused_amount, lenient_amount=args.lenient_amount,
    )


def start_simulator(reactor: Reactor, args: argparse.Namespace) -> Deferred[IListeningPort]:
    """Listen as a Caisse-AP terminal following the options from :func:`add_simulator_arguments`."""
    factory = SimulatorFactory(reactor, script_from_arguments(args), record_path=args.record)
    return serverFromString(reactor, args.listen).listen(factory)


# --- Caisse-AP on a serial line: `simulate caisse-ap --serial` ------------------------------------------------

def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 0")
    return int(text)


def add_serial_arguments(parser: argparse.ArgumentParser) -> None:
    """The options ``terminal-bridge simulate caisse-ap`` takes for ``--serial``."""
    group = parser.add_argument_group("serial mode (--serial)")
    group.add_argument("--serial", action="store_true",
                       help="simulate a terminal on a serial line: create a pseudo-terminal and print the device "
                            "to configure (--listen is then ignored; --disconnect makes the device vanish)")
    group.add_argument("--protocol", choices=PROTOCOLS, default=PROTOCOL_TLV,
                       help="payloads inside the frames: caisse-ap (TLV) or concert-v2 (default: %(default)s)")
    group.add_argument("--device-link", metavar="PATH",
                       help="also reach the device through this symbolic link, which follows the device when it "
                            "vanishes and comes back (like /dev/serial/by-id/...)")
    group.add_argument("--reappear-after", type=_seconds, default=3.0, metavar="SECONDS",
                       help="after vanishing (--disconnect), come back on a new device after this long "
                            "(default: %(default)s)")
    group.add_argument("--nak", type=_count, default=0, metavar="N",
                       help="refuse the first N request frames with NAK, as on a noisy line (default: 0)")
    group.add_argument("--no-ack", action="store_true", help="never acknowledge a request frame")
    group.add_argument("--bad-lrc", type=_count, default=0, metavar="N",
                       help="send the first N answer frames with a wrong checksum (default: 0)")
    group.add_argument("--byte-gap", type=_seconds, default=0.0, metavar="SECONDS",
                       help="write one byte at a time, this many seconds apart (default: 0)")
    group.add_argument("--deaf", action="store_true", help="answer nothing at all, not even the bridge's ENQ")


def faults_from_arguments(args: argparse.Namespace) -> LinkFaults:
    from bridge.terminals.caisse_ap.serial_simulator import LinkFaults

    return LinkFaults(nak_frames=args.nak, no_ack=args.no_ack, bad_lrc=args.bad_lrc, byte_gap=args.byte_gap,
                      deaf=args.deaf)


def start_serial_simulator(reactor: Reactor, args: argparse.Namespace) -> SerialTerminal:
    """Open a simulated serial terminal following the options of ``simulate caisse-ap --serial``."""
    from bridge.terminals.caisse_ap.serial_simulator import SerialTerminal

    terminal = SerialTerminal(
        reactor, script_from_arguments(args), protocol=args.protocol, faults=faults_from_arguments(args),
        device_link=args.device_link, reappear_after=args.reappear_after, record_path=args.record,
    )
    terminal.open()
    return terminal


# --- the fake Stripe API: `simulate stripe` ------------------------------------------------------------------

def add_fake_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", default="tcp:12111",
                        help="where to listen, as a Twisted endpoint (default: %(default)s); the interface is "
                             "127.0.0.1 unless the description names one")
    parser.add_argument("--reader", action="append", default=[], metavar="SERIAL",
                        help="a simulated reader already registered, with this serial number (repeatable; "
                             "default: one reader, SIM-0001)")
    parser.add_argument("--auto-present", metavar="CARD", default="4242424242424242",
                        help="the test card the readers present by themselves; 'none' to wait for "
                             "POST /_fake/present (default: %(default)s)")
    parser.add_argument("--delay", type=float, default=3.0,
                        help="seconds between process_payment_intent and the card (default: %(default)s)")


def loopback_endpoint(description: str) -> str:
    """A server endpoint description bound to 127.0.0.1 unless it names an interface."""
    if description.startswith(("tcp:", "tcp6:")) and "interface=" not in description:
        description += ":interface=127.0.0.1" if description.startswith("tcp:") else ":interface=\\:\\:1"
    return description


def start_fake(reactor: Reactor, args: argparse.Namespace) -> "Deferred[FakeStripe]":
    """Serve the fake Stripe API with the readers of ``simulate stripe``'s options."""
    from bridge.terminals.stripe.fake import FakeStripe  # twisted.web: only when used

    fake = FakeStripe(reactor)
    location = fake.add_location("Demo shop")
    for serial in args.reader or ["SIM-0001"]:
        reader = fake.add_reader(serial, label=f"Simulated {serial}", location=location["id"])
        if args.auto_present != "none":
            knobs = fake.reader_knobs(reader["id"])
            knobs.auto_present, knobs.auto_present_delay = args.auto_present, args.delay
    return fake.listen(reactor, loopback_endpoint(args.listen)).addCallback(lambda _: fake)
