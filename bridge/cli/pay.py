"""`terminal-bridge pay` and `refund`: a test client that makes one payment and follows it to its end.

It follows the payment across a lost connection: the loss is noticed at once (a closed connection, or
WebSocket pings left unanswered), the client connects again and sends the same command with the same id, which
the bridge answers with the existing payment (it never starts a second one), and the events it missed come
back after ``hello``.  When the bridge cannot be reached again, the outcome is ``unknown`` (exit 3), never a
guess, with the payment's id and the command that checks it.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import uuid
from typing import Any, Callable, Optional, Sequence, cast

from twisted.internet.defer import Deferred, TimeoutError, inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from bridge.api.client import Credentials, connect
from bridge.core.money import currency, format_major, parse_major
from bridge.core.reactor_types import TCPClock
from bridge.errors import BridgeError
from bridge.service.reactor import global_reactor

EXIT_APPROVED, EXIT_NOT_APPROVED, EXIT_ERROR, EXIT_UNKNOWN = 0, 1, 2, 3

#: Seconds between attempts to reach the bridge again after a lost connection.
RECONNECT_DELAYS = (0.5, 1.0, 1.5, 2.0, 3.0, 3.0, 4.0)
#: How long after losing the bridge the attempts to reach it again go on, waits for an answer included: a bridge
#: restarted by systemd is back well within that, and a bridge that went silent (power, network) makes each
#: attempt wait for an answer that never comes, which must not stretch the cashier's wait.
RECONNECT_WITHIN = 15.0
#: Seconds a connection may take (TCP, TLS and the WebSocket handshake each); at least the second, at most the
#: first, for an attempt to reach the bridge again.
CONNECT_TIMEOUT, MIN_ATTEMPT_TIMEOUT = 10.0, 1.0
#: A WebSocket ping after this many quiet seconds, and the connection counts as lost when its pong takes longer:
#: a bridge that vanished without closing the connection (power, network) is noticed too.
PING_INTERVAL = 5.0

PROGRESS = {
    "accepted": "The bridge recorded the {what}.",
    "in_progress": "Sent to the terminal: waiting for the customer's card...",
}
#: A refund may need no card (a Stripe reader refunds the original payment through Stripe alone); the client
#: does not know the terminal's kind, so it says what holds for both.
REFUND_PROGRESS = dict(PROGRESS, in_progress="Sent to the terminal: waiting for its answer (a card terminal asks "
                                             "for the customer's card)...")


def progress_line(state: Optional[str], what: str) -> Optional[str]:
    """What `pay` and `refund` print when the payment (``what``: "payment" or "refund") reaches ``state``."""
    line = (REFUND_PROGRESS if what == "refund" else PROGRESS).get(state or "")
    return line.format(what=what) if line else None


def describe_outcome(payment: dict[str, Any]) -> str:
    """A payment's end in the words a cashier reads."""
    cur = currency(payment["currency"])
    amount = f"{format_major(payment['amount'], cur)} {cur.code}"
    state = payment["state"]
    reason = (payment.get("reason") or {}).get("message") or ""
    details = payment.get("details") or {}
    refund = "REFUND " if payment.get("kind") == "refund" else ""
    if state == "approved":
        parts = [f"{refund}APPROVED: {amount}"]
        if details.get("refund_of"):
            parts.append(f"refund of {details['refund_of']}")
        if details.get("authorisation"):
            parts.append(f"authorisation {details['authorisation']}")
        if details.get("card_masked"):
            parts.append(f"card {details['card_masked']}")
        if details.get("application_label") or details.get("application"):
            parts.append(str(details.get("application_label") or details.get("application")))
        return ", ".join(parts) + "."
    words = {"declined": "DECLINED", "cancelled": "CANCELLED", "failed": "FAILED (nothing was charged)",
             "unknown": "UNKNOWN: check the terminal's receipt before charging again"}
    if refund and state == "failed":
        words["failed"] = "FAILED (nothing was refunded)"
    return f"{refund}{words.get(state, state.upper())}: {amount}. {reason}".strip()


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
    command_id = args.command_id or uuid.uuid4().hex
    check = check_command(["pay", "--terminal", args.terminal, "--amount", args.amount, "--currency", cur.code]
                          + (["--refund"] if args.refund else []) + (["--cheque"] if args.cheque else []),
                          args, command_id)

    def work(reactor: TCPClock, url: str, creds: Credentials, fingerprint: Optional[str]) -> Deferred:
        return pay(reactor, url, creds, fingerprint, args.cafile, args.terminal, amount, cur.code,
                   "refund" if args.refund else "debit", "cheque" if args.cheque else "card",
                   command_id, args.timeout, echo=print, check=check)

    return run_remote(args, work)


def run_refund(args: argparse.Namespace) -> int:
    command_id = args.command_id or uuid.uuid4().hex
    extra = ["--amount", args.amount] if args.amount else []
    check = check_command(["refund", args.payment_id, *extra], args, command_id)

    @inlineCallbacks
    def work(reactor: TCPClock, url: str, creds: Credentials, fingerprint: Optional[str]):
        arguments: dict[str, Any] = {"payment_id": args.payment_id}
        if args.amount:
            original = yield get_payment(reactor, url, creds, fingerprint, args.cafile, args.payment_id)
            arguments["amount"] = parse_major(args.amount, currency(original["currency"]))
        result = yield follow(reactor, url, creds, fingerprint, args.cafile, "payment.refund", arguments,
                              command_id, args.timeout, echo=print, check=check, what="refund")
        return result

    return run_remote(args, work)


def check_command(words: Sequence[str], args: argparse.Namespace, command_id: str) -> str:
    """The command that follows the same payment again (the same command id never starts a second one)."""
    connection = ["--credentials", args.credentials]
    for option in ("url", "fingerprint", "cafile"):
        if getattr(args, option, None):
            connection += [f"--{option}", getattr(args, option)]
    return shlex.join([program_name(), *words, *connection, "--command-id", command_id])


def program_name() -> str:
    """This command as the user can run it again: ``terminal-bridge`` when that is the one on the PATH, else the
    path it was run by (a source tree's ``.venv/bin/terminal-bridge``, which the demo's banner gives whole)."""
    invoked = sys.argv[0] if sys.argv else ""
    if os.path.basename(invoked) != "terminal-bridge":  # python3 -m bridge, or a test
        return "terminal-bridge"
    on_path = shutil.which("terminal-bridge")
    if on_path and os.path.realpath(on_path) == os.path.realpath(invoked):
        return "terminal-bridge"
    return invoked


def run_remote(args: argparse.Namespace,
               work: Callable[[TCPClock, str, Credentials, Optional[str]], "Deferred[int]"]) -> int:
    """Run ``work(reactor, url, credentials, fingerprint)`` against the bridge named by the command line
    (``--credentials``, ``--url``, ``--fingerprint``, ``--cafile``); returns its exit code, or EXIT_ERROR with the
    reason on standard error."""
    reactor = global_reactor()

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
            if e.code == "certificate_mismatch" and not fingerprint and not args.cafile:
                print(f"Error (certificate_mismatch): {args.credentials} has no fingerprint to check the "
                      "bridge's certificate against, and the certificate is not signed by a known authority. "
                      "Write the file again on the bridge (`terminal-bridge client credentials NAME "
                      "--write-credentials FILE`) or pass --fingerprint (shown by `terminal-bridge doctor`).",
                      file=sys.stderr)
            else:
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
    parser.add_argument("--credentials", metavar="FILE", required=True,
                        help="the JSON file written by `client add --write-credentials` (required)")
    parser.add_argument("--url", help="the bridge's address, wss://HOST:PORT (default: from the credentials file)")
    parser.add_argument("--fingerprint", help="the SHA-256 fingerprint of the bridge's certificate to pin "
                                              "(default: from the credentials file)")
    parser.add_argument("--cafile", help="trust this CA or certificate file instead of pinning a fingerprint")


def _credentials(args: argparse.Namespace) -> tuple[Credentials, dict[str, Any]]:
    if not args.credentials:
        raise BridgeError("bad_request", "Give --credentials FILE (written by `terminal-bridge client add "
                                         "--write-credentials FILE`).")
    written_by = "Write it with `terminal-bridge client credentials NAME --write-credentials FILE` on the bridge."
    try:
        return Credentials.from_file(args.credentials)
    except OSError as e:
        raise BridgeError("bad_request", f"Cannot read the credentials file {args.credentials}: "
                                         f"{e.strerror or e}.") from None
    except (ValueError, UnicodeDecodeError):
        raise BridgeError("bad_request", f"The credentials file {args.credentials} is not the JSON file "
                                         f"`client add --write-credentials` writes. {written_by}") from None
    except (KeyError, TypeError, AttributeError) as e:
        missing = f" (it has no {e.args[0]})" if isinstance(e, KeyError) else ""
        raise BridgeError("bad_request", f"The credentials file {args.credentials} lacks the client's id or "
                                         f"secrets{missing}. {written_by}") from None


@inlineCallbacks
def get_payment(reactor: TCPClock, url: str, creds: Credentials, fingerprint: Optional[str], cafile: Optional[str],
                payment_id: str):
    """One ``payment.get`` on a connection of its own."""
    _factory, opened = connect(reactor, url, creds, fingerprint=fingerprint, cafile=cafile)
    proto = yield opened
    try:
        yield proto.call("hello", {"client": creds.client_id})
        payment = yield proto.call("payment.get", {"payment_id": payment_id})
    finally:
        proto.sendClose()
    return payment


def pay(reactor: TCPClock, url: str, creds: Credentials, fingerprint: Optional[str], cafile: Optional[str],
        terminal: str, amount: int, currency_code: str, kind: str, method: str, command_id: str,
        timeout: float, echo: Any = print, check: str = "",
        reconnect_delays: Sequence[float] = RECONNECT_DELAYS,
        ping_interval: Optional[float] = PING_INTERVAL,
        reconnect_within: float = RECONNECT_WITHIN) -> "Deferred[int]":
    """Start a payment and wait for its final state; fires with the exit code."""
    return follow(reactor, url, creds, fingerprint, cafile, "payment.start",
                  {"terminal": terminal, "amount": amount, "currency": currency_code, "kind": kind,
                   "method": method}, command_id, timeout, echo, check, reconnect_delays,
                  what="refund" if kind == "refund" else "payment", ping_interval=ping_interval,
                  reconnect_within=reconnect_within)


class _Lost(Exception):
    """The connection to the bridge closed before the payment's end was known."""


def _lose(_: Any, ended: Deferred) -> None:
    """The connection closed: the payment's end is lost unless it was known already."""
    if not ended.called:
        ended.errback(_Lost())


@inlineCallbacks
def follow(reactor: TCPClock, url: str, creds: Credentials, fingerprint: Optional[str], cafile: Optional[str],
           op: str, arguments: dict[str, Any], command_id: str, timeout: float, echo: Any = print,
           check: str = "", reconnect_delays: Sequence[float] = RECONNECT_DELAYS, what: str = "payment",
           ping_interval: Optional[float] = PING_INTERVAL, reconnect_within: float = RECONNECT_WITHIN):
    """Send ``op`` (``payment.start`` or ``payment.refund``) with ``command_id`` and follow the payment it
    makes to its end, across lost connections (tried again for ``reconnect_within`` seconds after each loss);
    fires with the exit code."""
    deadline = reactor.seconds() + timeout
    seen_states: list[Optional[str]] = []
    known: dict[str, Any] = {}  # the latest payment object
    sent = False  # once the command may have reached the bridge, a failure to learn its end is `unknown`
    delays = iter(reconnect_delays)
    first = True
    announced: list[str] = []
    lost_at: Optional[float] = None  # when the bridge was lost, while it is being reached again

    def note(payment: dict[str, Any]) -> None:
        known.clear()
        known.update(payment)
        state = payment.get("state")
        if state not in seen_states:
            seen_states.append(state)
            line = progress_line(state, what)
            if line:
                echo(line)

    while True:
        attempt_timeout = CONNECT_TIMEOUT
        if not first:
            if lost_at is None:
                lost_at = reactor.seconds()
            delay = next(delays, None)
            if delay is None or reactor.seconds() >= lost_at + reconnect_within:
                return _give_up(echo, known, sent, check, what, f"the bridge at {url} cannot be reached again")
            yield deferLater(cast(IReactorTime, reactor), delay, lambda: None)
            # An attempt that gets no answer (a bridge gone silent) ends with the time left to reach it again.
            left = lost_at + reconnect_within - reactor.seconds()
            attempt_timeout = min(CONNECT_TIMEOUT, max(left, MIN_ATTEMPT_TIMEOUT))
        try:
            factory, opened = connect(reactor, url, creds, fingerprint=fingerprint, cafile=cafile,
                                      timeout=attempt_timeout)
            factory.setProtocolOptions(openHandshakeTimeout=attempt_timeout)
            if ping_interval:
                factory.setProtocolOptions(autoPingInterval=ping_interval, autoPingTimeout=ping_interval)
            proto = yield opened
        except Exception:
            if first and not sent:
                raise
            first = False
            continue
        lost_at = None  # reached: a later loss has its own time (the attempts, counted from the start, stay few)
        first = False
        ended: Deferred = Deferred()

        def on_event(event: dict[str, Any], proto: Any = proto, ended: Deferred = ended) -> None:
            payment = event.get("payment") or {}
            if payment.get("command_id") != command_id:
                return
            note(payment)
            proto.call("events.ack", {"seq": event["seq"]}).addErrback(lambda f: None)
            if payment.get("final") and not ended.called:
                ended.callback(payment)

        factory.on_event = on_event
        factory.closed.addBoth(_lose, ended)
        outcome: Optional[dict[str, Any]] = None
        lost, error = False, None  # type: bool, Optional[Exception]
        try:
            yield proto.call("hello", {"client": creds.client_id})
            sent = True
            payment = yield proto.call(op, arguments, message_id=command_id)
            if not announced:
                announced.append(payment["id"])
                echo(f"{what.capitalize()} {payment['id']} started on {payment.get('terminal')}.")
            note(payment)
            if payment.get("final") and not ended.called:
                ended.callback(payment)
            remaining = deadline - reactor.seconds()
            if not ended.called:
                ended.addTimeout(max(remaining, 0), cast(IReactorTime, reactor))
            outcome = yield ended
        except _Lost:
            lost = True
        except TimeoutError:
            pass  # outcome stays None: not ended in time
        except BridgeError as e:
            lost, error = e.code == "connection_lost", e
        except Exception as e:
            error = e
        finally:
            if proto.state != proto.STATE_CLOSED:
                proto.sendClose()
                yield factory.closed.addErrback(lambda f: None)
        if lost:
            ended.addErrback(lambda f: None)  # nobody waits on it any more
            echo("The connection to the bridge was lost: connecting again...")
            continue
        if error is not None:
            raise error
        if outcome is None:
            return _give_up(echo, known, sent, check, what, f"it did not end within {timeout:g} s")
        echo(describe_outcome(outcome))
        return exit_code_for(outcome["state"])


def _give_up(echo: Any, known: dict[str, Any], sent: bool, check: str, what: str, why: str) -> int:
    """The end of a payment that could not be learnt: unknown, with what checks it."""
    if not sent:
        raise BridgeError("connection_lost", f"The {what} could not be sent: {why}.")
    if known.get("id"):
        cur = currency(known["currency"])
        amount = f"{format_major(known['amount'], cur)} {cur.code}"
        echo(f"UNKNOWN: {amount}. The {what} {known['id']} was last seen {known.get('state')}, but {why}: "
             "it may have gone through. Check it before charging again:")
    else:
        echo(f"UNKNOWN: the bridge may have recorded the {what}, but {why}. Check it before charging again:")
    if check:
        echo(f"  {check}")
    echo("(the same command id follows the same payment; it never starts a second one)")
    return EXIT_UNKNOWN
