"""Every reason code a driver can give a payment is documented in docs/protocol.md (issue 17, item 2).

The codes are read from the drivers' source, not from a list kept beside them: the second value of every
``Outcome(state, "code", ...)``/``_outcome(state, "code")`` call and of every ``(states.X, "code", ...)`` table
entry, the code of every ``BridgeError("code", ...)`` a driver raises, the safety rule's codes, and the codes a
Stripe call's error becomes (they end payments as they are).
"""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

from bridge.terminals.stripe import api as stripe_api

ROOT = pathlib.Path(__file__).resolve().parent.parent
if not (ROOT / "docs" / "protocol.md").exists():  # the .deb's build runs the tests without docs/ around them
    pytest.skip("no source tree around the tests (docs/protocol.md is missing)", allow_module_level=True)
SOURCES = sorted((ROOT / "bridge" / "terminals").rglob("*.py")) + [ROOT / "bridge" / "core" / "safety.py"]
#: Codes that never end a payment: card reader registration only (bridge stripe register).
NOT_PAYMENT_REASONS = {"reader_location_not_allowed"}


def _name(node: ast.AST) -> str:
    return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""


def _text(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def codes_in(path: pathlib.Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and _name(node.func) in ("Outcome", "_outcome") and len(node.args) > 1:
            found.add(_text(node.args[1]))
        elif isinstance(node, ast.Call) and _name(node.func) in ("BridgeError", "StripeCallError") and node.args:
            found.add(_text(node.args[0]))
        elif (isinstance(node, ast.Tuple) and len(node.elts) > 1 and isinstance(node.elts[0], ast.Attribute)
              and _name(node.elts[0].value) == "states"):
            found.add(_text(node.elts[1]))
    found.discard(None)
    return found


def driver_reasons() -> set[str]:
    codes = set().union(*(codes_in(path) for path in SOURCES))
    codes |= set(stripe_api.MESSAGES) | set(stripe_api._STRIPE_CODES.values())
    return codes - NOT_PAYMENT_REASONS


def test_the_scan_finds_the_codes_of_each_family():
    codes = driver_reasons()
    for code in ("approved", "card_declined", "cheque_refused", "no_ack", "link_lost", "capture_unconfirmed",
                 "stripe_bad_answer", "internal_error", "journal_unavailable", "reader_offline"):
        assert code in codes


def test_every_reason_code_a_driver_can_give_is_in_docs_protocol():
    documented = set(re.findall(r"`([a-z0-9_]+)`", (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")))
    assert sorted(driver_reasons() - documented) == []
