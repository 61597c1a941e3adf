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
