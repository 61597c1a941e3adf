"""`terminal-bridge payments`: recent payments from the journal, for store IT."""

from __future__ import annotations

import argparse
import os
import sys

from bridge.config import BridgeConfig
from bridge.core.journal import Journal
from bridge.core.money import currency, format_major
from bridge.core.payments import iso
from bridge.errors import BridgeError


def list_payments(config: BridgeConfig, args: argparse.Namespace) -> int:
    if not os.path.exists(config.journal_path):
        print(f"No journal yet at {config.journal_path}: the bridge has not run with this configuration.")
        return 0
    try:
        journal = Journal.open_readonly(config.journal_path)
    except BridgeError as e:
        print(e.message, file=sys.stderr)
        return 1
    records = journal.list(terminal=args.terminal, state=args.state, limit=args.limit)
    if not records:
        print("No payments match.")
        return 0
    print(f"{'time (UTC)':24} {'terminal':12} {'amount':>12} {'state':12} {'payment':36} reason")
    for r in records:
        amount = f"{format_major(r.amount, currency(r.currency))} {r.currency}"
        reason = r.reason_message or ""
        print(f"{iso(r.created):24} {r.terminal:12} {amount:>12} {r.state:12} {r.id:36} {reason}")
    return 0
