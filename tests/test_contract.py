"""The driver contract is written twice, for two readers: :class:`ITerminalDriver` (zope.interface, which the
drivers declare and the tests verify) and :class:`TerminalDriver` (the same as a typing Protocol, which mypy can
call through without the mypy-zope plugin).  They must say the same thing."""

from __future__ import annotations

import inspect

from bridge.core.contract import ITerminalDriver, TerminalDriver


def _protocol_members() -> dict[str, object]:
    members = set(TerminalDriver.__annotations__)
    members |= {name for name, value in vars(TerminalDriver).items()
                if inspect.isfunction(value) and not name.startswith("_")}
    return {name: getattr(TerminalDriver, name, None) for name in members}


def test_the_protocol_names_what_the_interface_names():
    assert sorted(_protocol_members()) == sorted(ITerminalDriver.names())


def test_each_method_takes_the_same_arguments_in_both():
    for name, method in _protocol_members().items():
        declared = ITerminalDriver[name]
        if not inspect.isfunction(method):
            assert not hasattr(declared, "getSignatureInfo"), f"{name} is a method of the interface"
            continue
        assert ["self", *declared.getSignatureInfo()["positional"]] == list(inspect.signature(method).parameters), \
            name
