"""Each layer imports only downwards (issue 17): errors and config, core (with the driver contract), terminals,
api, uplink, service, cli.  Late imports inside functions count too."""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent / "bridge"
#: Each package and the packages above it, which it must not import.
ABOVE = {
    "core": ("terminals", "api", "uplink", "service", "cli", "testing"),
    "terminals": ("api", "uplink", "service", "cli", "testing"),
    "api": ("uplink", "service", "cli", "testing"),
    "uplink": ("service", "cli", "testing"),
    "service": ("cli", "testing"),
}


def imported(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name.split(".")[0] == "bridge"}


@pytest.mark.parametrize("package", sorted(ABOVE))
def test_a_layer_imports_nothing_above_it(package):
    wrong = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in sorted(imported(path)):
            parts = name.split(".")
            if len(parts) > 1 and parts[1] in ABOVE[package]:
                wrong.append(f"{path.relative_to(ROOT.parent)} imports {name}")
    assert wrong == []


def test_the_session_reads_payments_through_the_payment_service():
    text = (ROOT / "api" / "session.py").read_text(encoding="utf-8")
    assert "payments.journal" not in text


def test_the_command_line_modules_import_each_other_without_cycles():
    graph = {}
    for path in sorted((ROOT / "cli").glob("*.py")):
        graph[f"bridge.cli.{path.stem}"] = {name for name in imported(path) if name.startswith("bridge.cli.")}
    for path in sorted((ROOT / "cli").glob("*.py")):  # "from bridge.cli import doctor" names a module too
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "bridge.cli":
                graph[f"bridge.cli.{path.stem}"] |= {f"bridge.cli.{a.name}" for a in node.names}

    def reaches(start, goal, seen):
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    assert sorted(m for m in graph if reaches(m, m, {m})) == []


def test_the_catalogues_terminal_types_each_have_a_doctor_check():
    from bridge.cli.doctor import TERMINAL_CHECKS
    from bridge.terminals.catalogue import TYPES

    assert sorted(TERMINAL_CHECKS) == sorted(TYPES)


def test_the_test_doubles_ship_from_one_place():
    import bridge.testing as testing
    from zope.interface.verify import verifyObject

    from bridge.core.contract import ITerminalDriver
    from bridge.terminals.caisse_ap.serial_simulator import SerialTerminal
    from bridge.terminals.caisse_ap.simulator import SimulatorFactory, SimulatorScript
    from bridge.terminals.stripe.fake import FakeStripe

    assert verifyObject(ITerminalDriver, testing.RecordingDriver("till-1"))
    assert (testing.FakeStripe, testing.SimulatorFactory, testing.SimulatorScript, testing.SerialTerminal) == \
        (FakeStripe, SimulatorFactory, SimulatorScript, SerialTerminal)
    assert sorted(testing.__all__) == ["FakeStripe", "RecordingDriver", "SerialTerminal", "SimulatorFactory",
                                       "SimulatorScript"]


def test_every_driver_provides_the_whole_contract():
    from zope.interface.verify import verifyClass

    from bridge.core.contract import ITerminalDriver
    from bridge.terminals.caisse_ap.serial import CaisseAPSerialDriver
    from bridge.terminals.caisse_ap.tcp import CaisseAPTCPDriver
    from bridge.terminals.stripe.driver import StripeReaderDriver

    for driver in (CaisseAPTCPDriver, CaisseAPSerialDriver, StripeReaderDriver):
        assert verifyClass(ITerminalDriver, driver)
    assert {"start", "stop", "status", "pay", "cancel", "recover"} <= set(ITerminalDriver.names())


def test_only_the_daemon_hooks_the_reactors_shutdown_of_what_it_runs():
    """The daemon's service tree starts and stops the drivers (issue 17): no driver, no terminal module, no part
    of the service registers a shutdown trigger of its own (the command line's one-shot commands may)."""
    packages = ("core", "terminals", "api", "uplink", "status", "service")
    hooked = [str(path.relative_to(ROOT.parent)) for package in packages
              for path in sorted((ROOT / package).rglob("*.py"))
              if "addSystemEventTrigger" in path.read_text(encoding="utf-8")]
    assert hooked == ["bridge/service/run.py"]


def test_the_simulators_and_the_fake_leave_their_command_lines_to_the_cli():
    modules = [ROOT / "terminals" / "caisse_ap" / "simulator.py",
               ROOT / "terminals" / "caisse_ap" / "serial_simulator.py",
               *sorted((ROOT / "terminals" / "stripe" / "fake").glob("*.py"))]
    assert [str(m.relative_to(ROOT.parent)) for m in modules if "argparse" in m.read_text(encoding="utf-8")] == []
