"""Terminal types the configuration may name, each with its option checker and its driver builder."""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

from bridge.config import TerminalConfig
from bridge.terminals.base import ITerminalDriver
from bridge.terminals.caisse_ap.tcp import CaisseAPTCPDriver, parse_tcp_options


class TerminalType(NamedTuple):
    validate: Callable[[Mapping[str, str]], list[tuple[str, str]]]
    build: Callable[[TerminalConfig, Any], ITerminalDriver]


def _check(parse: Callable) -> Callable[[Mapping[str, str]], list[tuple[str, str]]]:
    return lambda options: parse(options)[1]


def _build_caisse_ap_tcp(config: TerminalConfig, reactor: Any) -> ITerminalDriver:
    kwargs, problems = parse_tcp_options(config.options)
    assert not problems, problems
    return CaisseAPTCPDriver(config.name, reactor, **kwargs)


TYPES: dict[str, TerminalType] = {
    "caisse-ap-tcp": TerminalType(_check(parse_tcp_options), _build_caisse_ap_tcp),
}

VALIDATORS = {name: t.validate for name, t in TYPES.items()}


def build_driver(config: TerminalConfig, reactor: Any) -> ITerminalDriver:
    return TYPES[config.type].build(config, reactor)
