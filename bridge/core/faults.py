"""A test seam for crash testing: named points in a payment's path where the process can be made to die.

``checkpoint("journal.after_commit")`` does nothing unless the environment variable ``TERMINAL_BRIDGE_FAULT``
names that point when this module is first imported; then the process sends itself SIGKILL there (no cleanup,
no flush: a power cut, as far as the bridge can tell).  ``NAME@N`` dies at the N-th time the point is reached
instead of the first.  A line ``terminal-bridge fault: killed at NAME`` goes to stderr first, so a test knows
the point was really reached.

The variable is read once, so an unset variable costs one string comparison per checkpoint.  It is for the
fault-injection tests (tests/test_fault_injection.py, docs/durability.md); never set it on a real bridge.

The points (docs/durability.md lists them with what each one proves):

- ``payment.before_write.STATE`` / ``payment.after_write.STATE``: around journaling a payment's new STATE
  (``accepted``, ``in_progress``, ``approved``, ``declined``, ``cancelled``, ``failed``, ``unknown``);
- ``journal.before_commit`` / ``journal.after_commit``: around the writer's COMMIT of a batch;
- ``caisse_ap.request_written``: the request was handed to the terminal's connection;
- ``caisse_ap.answer_bytes``: bytes of the terminal's answer arrived;
- ``caisse_ap.answer_taken``: the whole answer was read, before the bridge acts on it.
"""

from __future__ import annotations

import os
import signal
from typing import Optional

ENVIRONMENT_VARIABLE = "TERMINAL_BRIDGE_FAULT"


def _parse(spec: Optional[str]) -> tuple[Optional[str], int]:
    if not spec:
        return None, 0
    name, _, count = spec.partition("@")
    return name, int(count) if count.isdigit() and int(count) > 0 else 1


_ARMED, _AT = _parse(os.environ.get(ENVIRONMENT_VARIABLE))
_reached = 0


def checkpoint(name: str) -> None:
    """Die here (SIGKILL) if the test seam is armed for ``name``; otherwise do nothing."""
    if name != _ARMED:
        return
    global _reached
    _reached += 1
    if _reached == _AT:
        os.write(2, f"terminal-bridge fault: killed at {name}\n".encode())
        os.kill(os.getpid(), signal.SIGKILL)
