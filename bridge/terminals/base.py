"""Moved to :mod:`bridge.core.contract` (the driver contract sits under the core it serves).

Kept only so that bench/bench.py (another branch's file) keeps importing; nothing in bridge/ or tests/ uses it.
"""

from bridge.core.contract import (  # noqa: F401
    CARD, CHEQUE, DEBIT, REFUND, BeforeSend, ITerminalDriver, Outcome, PaymentRequest)
