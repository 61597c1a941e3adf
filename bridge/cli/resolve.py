"""`terminal-bridge resolve`: settle an `unknown` payment with what the terminal's receipt shows."""

from __future__ import annotations

import argparse
from typing import Any, Optional

from twisted.internet.defer import inlineCallbacks

from bridge.api.client import Credentials, connect
from bridge.cli.pay import describe_outcome, run_remote
from bridge.core.reactor_types import TCPClock

EXIT_RESOLVED = 0


def run_resolve(args: argparse.Namespace) -> int:
    arguments = {"payment_id": args.payment_id, "outcome": args.outcome, "note": args.note}
    if args.authorisation:
        arguments["authorisation"] = args.authorisation

    def work(reactor: TCPClock, url: str, creds: Credentials, fingerprint: Optional[str]):
        return resolve(reactor, url, creds, fingerprint, args.cafile, arguments, echo=print)

    return run_remote(args, work)


@inlineCallbacks
def resolve(reactor: TCPClock, url: str, creds: Credentials, fingerprint: Optional[str], cafile: Optional[str],
            arguments: dict[str, Any], echo: Any = print):
    """Send ``payment.resolve``; returns the exit code (errors are raised as BridgeError)."""
    _factory, opened = connect(reactor, url, creds, fingerprint=fingerprint, cafile=cafile)
    proto = yield opened
    try:
        yield proto.call("hello", {"client": creds.client_id})
        payment = yield proto.call("payment.resolve", arguments)
    finally:
        proto.sendClose()
    echo(f"Payment {payment['id']} resolved as {payment['state']} by {creds.client_id}.")
    echo(describe_outcome(payment))
    return EXIT_RESOLVED
