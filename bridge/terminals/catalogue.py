"""Terminal types the configuration may name, each with its option checker and its driver builder.

A builder only builds: the daemon starts each driver (:meth:`~bridge.core.contract.ITerminalDriver.start`) and
stops it in its stop order."""

from __future__ import annotations

from typing import Callable, Mapping, NamedTuple

from bridge.config import TerminalConfig
from bridge.core.contract import TerminalDriver
from bridge.core.reactor_types import FDClock, Reactor, TCPClock, ThreadedClock
from bridge.terminals.caisse_ap.serial_options import parse_serial_options
from bridge.terminals.caisse_ap.tcp import CaisseAPTCPDriver, parse_tcp_options
from bridge.terminals.stripe.options import parse_stripe_options


class TerminalType(NamedTuple):
    validate: Callable[[Mapping[str, str]], list[tuple[str, str]]]
    build: Callable[[TerminalConfig, Reactor], TerminalDriver]


def _check(parse: Callable) -> Callable[[Mapping[str, str]], list[tuple[str, str]]]:
    return lambda options: parse(options)[1]


def _build_caisse_ap_tcp(config: TerminalConfig, reactor: TCPClock) -> TerminalDriver:
    kwargs, problems = parse_tcp_options(config.options)
    assert not problems, problems
    return CaisseAPTCPDriver(config.name, reactor, **kwargs)


def _build_caisse_ap_serial(config: TerminalConfig, reactor: FDClock) -> TerminalDriver:
    from bridge.terminals.caisse_ap.serial import CaisseAPSerialDriver  # imports pyserial: only when used

    kwargs, problems = parse_serial_options(config.options)
    assert not problems, problems
    return CaisseAPSerialDriver(config.name, reactor, **kwargs)


def _build_stripe(config: TerminalConfig, reactor: ThreadedClock) -> TerminalDriver:
    from bridge.terminals.stripe.driver import build_stripe_driver  # imports the stripe library: only when used

    return build_stripe_driver(config, reactor)


TYPES: dict[str, TerminalType] = {
    "caisse-ap-tcp": TerminalType(_check(parse_tcp_options), _build_caisse_ap_tcp),
    "stripe": TerminalType(_check(parse_stripe_options), _build_stripe),
    "caisse-ap-serial": TerminalType(_check(parse_serial_options), _build_caisse_ap_serial),
}

VALIDATORS = {name: t.validate for name, t in TYPES.items()}


def build_driver(config: TerminalConfig, reactor: Reactor) -> TerminalDriver:
    return TYPES[config.type].build(config, reactor)
