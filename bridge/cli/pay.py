"""`terminal-bridge pay`: a test client that makes one payment and follows it to its end."""

from __future__ import annotations

import argparse
import sys
import uuid
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, inlineCallbacks

from bridge.api.client import Credentials, connect
from bridge.core.money import currency, format_major, parse_major
from bridge.errors import BridgeError

EXIT_APPROVED, EXIT_NOT_APPROVED, EXIT_ERROR, EXIT_UNKNOWN = 0, 1, 2, 3

PROGRESS = {
    "accepted": "The bridge recorded the payment.",
    "in_progress": "Sent to the terminal: waiting for the customer's card...",
}


def describe_outcome(payment: dict[str, Any]) -> str:
    """A payment's end in the words a cashier reads."""
    cur = currency(payment["currency"])
    amount = f"{format_major(payment['amount'], cur)} {cur.code}"
    state = payment["state"]
    reason = (payment.get("reason") or {}).get("message") or ""
    details = payment.get("details") or {}
    if state == "approved":
        parts = [f"APPROVED: {amount}"]
        if details.get("authorisation"):
            parts.append(f"authorisation {details['authorisation']}")
        if details.get("card_masked"):
            parts.append(f"card {details['card_masked']}")
        if details.get("application_label") or details.get("application"):
            parts.append(str(details.get("application_label") or details.get("application")))
        return ", ".join(parts) + "."
    words = {"declined": "DECLINED", "cancelled": "CANCELLED", "failed": "FAILED (nothing was charged)",
             "unknown": "UNKNOWN: check the terminal's receipt before charging again"}
    return f"{words.get(state, state.upper())}: {amount}. {reason}".strip()


def exit_code_for(state: str) -> int:
    if state == "approved":
        return EXIT_APPROVED
    if state == "unknown":
        return EXIT_UNKNOWN
    return EXIT_NOT_APPROVED


def run_pay(args: argparse.Namespace) -> int:
    try:
        cur = currency(args.currency.upper())
        amount = parse_major(args.amount, cur)
    except BridgeError as e:
        print(e.message, file=sys.stderr)
        return EXIT_ERROR

    def work(reactor: Any, url: str, creds: Credentials, fingerprint: Optional[str]) -> Deferred:
        return pay(reactor, url, creds, fingerprint, args.cafile, args.terminal, amount, cur.code,
                   "refund" if args.refund else "debit", "cheque" if args.cheque else "card",
                   args.command_id or uuid.uuid4().hex, args.timeout, echo=print)

    return run_remote(args, work)


def run_remote(args: argparse.Namespace,
               work: Callable[[Any, str, Credentials, Optional[str]], "Deferred[int]"]) -> int:
    """Run ``work(reactor, url, credentials, fingerprint)`` against the bridge named by the command line
    (``--credentials``, ``--url``, ``--fingerprint``, ``--cafile``); returns its exit code, or EXIT_ERROR with the
    reason on standard error."""
    from twisted.internet import reactor

    try:
        creds, defaults = _credentials(args)
    except BridgeError as e:
        print(e.message, file=sys.stderr)
        return EXIT_ERROR
    url = args.url or defaults.get("url")
    if not url:
        print("Name the bridge with --url wss://HOST:PORT (or put it in the credentials file).", file=sys.stderr)
        return EXIT_ERROR
    fingerprint = args.fingerprint or (None if args.cafile else defaults.get("fingerprint"))
    result: list[int] = [EXIT_ERROR]

    @inlineCallbacks
    def main():
        try:
            result[0] = yield work(reactor, url, creds, fingerprint)
        except BridgeError as e:
            print(f"Error ({e.code}): {e.message}", file=sys.stderr)
        except Exception as e:  # a connection or TLS failure
            print(f"Could not talk to the bridge at {url}: {e}", file=sys.stderr)
        finally:
            reactor.stop()

    reactor.callWhenRunning(main)
    reactor.run()
    return result[0]


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """--credentials, --url, --fingerprint and --cafile: how a command reaches a running bridge."""
    parser.add_argument("--credentials", metavar="FILE",
                        help="the JSON file written by `client add --write-credentials`")
    parser.add_argument("--url", help="the bridge's address, wss://HOST:PORT (default: from the credentials file)")
    parser.add_argument("--fingerprint", help="the SHA-256 fingerprint of the bridge's certificate to pin "
                                              "(default: from the credentials file)")
    parser.add_argument("--cafile", help="trust this CA or certificate file instead of pinning a fingerprint")


def _credentials(args: argparse.Namespace) -> tuple[Credentials, dict[str, Any]]:
    if not args.credentials:
        raise BridgeError("bad_request", "Give --credentials FILE (written by `terminal-bridge client add "
                                         "--write-credentials FILE`).")
    try:
        return Credentials.from_file(args.credentials)
    except (OSError, ValueError, KeyError) as e:
        raise BridgeError("bad_request", f"Cannot read the credentials file {args.credentials}: {e}") from None


@inlineCallbacks
def pay(reactor: Any, url: str, creds: Credentials, fingerprint: Optional[str], cafile: Optional[str],
        terminal: str, amount: int, currency_code: str, kind: str, method: str, command_id: str,
        timeout: float, echo: Any = print):
    """Start a payment and wait for its final state; returns the exit code."""
    factory, opened = connect(reactor, url, creds, fingerprint=fingerprint, cafile=cafile)
    proto = yield opened
    final: Deferred = Deferred()
    seen_states: list[str] = []

    def on_event(event: dict[str, Any]) -> None:
        payment = event.get("payment") or {}
        if payment.get("command_id") != command_id:
            return
        state = payment.get("state")
        if state not in seen_states:
            seen_states.append(state)
            if state in PROGRESS:
                echo(PROGRESS[state])
        proto.call("events.ack", {"seq": event["seq"]}).addErrback(lambda f: None)
        if payment.get("final") and not final.called:
            final.callback(payment)

    factory.on_event = on_event
    try:
        yield proto.call("hello", {"client": creds.client_id})
        payment = yield proto.call("payment.start", {"terminal": terminal, "amount": amount,
                                                     "currency": currency_code, "kind": kind, "method": method},
                                   message_id=command_id)
        echo(f"Payment {payment['id']} started on {terminal}.")
        if payment.get("final"):
            outcome = payment
        else:
            final.addTimeout(timeout, reactor)
            outcome = yield final
    finally:
        proto.sendClose()
    echo(describe_outcome(outcome))
    return exit_code_for(outcome["state"])
