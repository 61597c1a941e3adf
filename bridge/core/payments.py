"""The payment service: validates, journals, drives a terminal, and tells subscribers every state change.

Order of things for one payment, and why:

1. validate the arguments (nothing is journaled for a bad command);
2. journal the payment as ``accepted`` (fsync) and tell the client;
3. the driver connects to the terminal; just before the first byte it asks, through ``before_send``, for the
   payment to be journaled ``in_progress`` (fsync), and only then writes;
4. the driver's outcome is journaled (fsync) and only then told.

So after a crash, ``accepted`` means the terminal never saw the request (``failed``) and ``in_progress`` means
it may have (``unknown``).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime, timezone
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.logger import Logger

from bridge.core import states
from bridge.core.journal import Event, Journal, PaymentRecord
from bridge.core.money import currency, validate_amount
from bridge.core.registry import TerminalRegistry
from bridge.errors import BridgeError
from bridge.terminals.base import CARD, CHEQUE, DEBIT, REFUND, Outcome, PaymentRequest

EventListener = Callable[[Event], None]

MAX_COMMAND_ID_LENGTH = 128


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def payment_view(record: PaymentRecord) -> dict[str, Any]:
    """A payment as clients see it (docs/protocol.md, "Payment object")."""
    return {
        "id": record.id,
        "command_id": record.command_id,
        "terminal": record.terminal,
        "kind": record.kind,
        "method": record.method,
        "amount": record.amount,
        "currency": record.currency,
        "state": record.state,
        "final": states.is_final(record.state),
        "reason": ({"code": record.reason_code, "message": record.reason_message}
                   if record.reason_code else None),
        "details": record.details,
        "created": iso(record.created),
        "updated": iso(record.updated),
    }


def args_digest(terminal: str, kind: str, method: str, amount: int, currency_code: str) -> str:
    canonical = json.dumps([terminal, kind, method, amount, currency_code], separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class PaymentService:
    log = Logger()

    def __init__(self, journal: Journal, registry: TerminalRegistry, clock: Any,
                 new_id: Callable[[], str] = lambda: "pay_" + uuid.uuid4().hex) -> None:
        self.journal = journal
        self.registry = registry
        self._clock = clock
        self._new_id = new_id
        self._listeners: list[EventListener] = []
        # Payments between "command received" and "accepted is on disk", by command id: a duplicate command
        # arriving meanwhile waits for the first instead of starting a second payment.
        self._creating: dict[str, Deferred] = {}
        self._running: dict[str, Deferred] = {}

    # -- subscribers ----------------------------------------------------------------------------

    def subscribe(self, listener: EventListener) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: EventListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _publish(self, event: Event) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                self.log.failure("An event listener failed", seq=event.seq)

    # -- commands -------------------------------------------------------------------------------

    def start(self, client_id: str, command_id: object, args: dict[str, Any]) -> "Deferred[dict[str, Any]]":
        """Start a payment (or return the one this command id already started)."""
        try:
            request = self._validate(command_id, args)
        except BridgeError as e:
            d: Deferred = Deferred()
            d.errback(e)
            return d
        terminal, kind, method, amount, cur = request
        digest = args_digest(terminal, kind, method, amount, cur.code)
        assert isinstance(command_id, str)
        return self._start(client_id, command_id, terminal, kind, method, amount, cur, digest)

    def _validate(self, command_id: object, args: dict[str, Any]) -> tuple:
        if not isinstance(command_id, str) or not 0 < len(command_id) <= MAX_COMMAND_ID_LENGTH:
            raise BridgeError("bad_request", "The command id must be a non-empty string of at most 128 characters.")
        terminal = args.get("terminal")
        self.registry.driver(terminal)
        amount = validate_amount(args.get("amount"))
        cur = currency(args.get("currency"))
        kind = args.get("kind", DEBIT)
        if kind not in (DEBIT, REFUND):
            raise BridgeError("bad_request", "The payment kind must be 'debit' or 'refund'.")
        method = args.get("method", CARD)
        if method not in (CARD, CHEQUE):
            raise BridgeError("bad_request", "The payment method must be 'card' or 'cheque'.")
        return terminal, kind, method, amount, cur

    @inlineCallbacks
    def _start(self, client_id, command_id, terminal, kind, method, amount, cur, digest):
        pending = self._creating.get(command_id)
        if pending is not None:
            yield _wait(pending)
        existing = self.journal.get_by_command(command_id)
        if existing is not None:
            if existing.args_digest != digest or existing.client_id != client_id:
                raise BridgeError(
                    "idempotency_mismatch",
                    "This command id was already used for a different payment. Use a new command id.",
                )
            return payment_view(existing)

        payment_id = self._new_id()
        driver = self.registry.reserve(terminal, payment_id)
        now = self._clock.seconds()
        record = PaymentRecord(
            id=payment_id, command_id=command_id, client_id=client_id, terminal=terminal, kind=kind,
            method=method, amount=amount, currency=cur.code, args_digest=digest, state=states.ACCEPTED,
            created=now, updated=now,
        )
        creating: Deferred = Deferred()
        self._creating[command_id] = creating
        try:
            event = yield self.journal.create(record, {"event": "payment.state", "payment": payment_view(record)},
                                              actor=client_id)
        except BaseException:
            self.registry.release(terminal, payment_id)
            raise
        finally:
            del self._creating[command_id]
            creating.callback(None)
        self._log_state(record, client_id)
        self._publish(event)

        request = PaymentRequest(payment_id=record.id, kind=kind, amount=amount, currency=cur, method=method)
        state = {"record": record}

        def before_send() -> Deferred:
            moved = state["record"].moved_to(states.IN_PROGRESS, None, None, None, self._clock.seconds())
            return self._transition(moved, actor="bridge").addCallback(lambda r: state.update(record=r))

        run = driver.pay(request, before_send)
        self._running[record.id] = run
        run.addCallback(lambda outcome: self._finish(state["record"], outcome))
        run.addErrback(lambda f: self.log.failure("Payment {payment_id} could not be finished", f,
                                                  payment_id=record.id))
        run.addBoth(lambda _: self._done(terminal, record.id))
        return payment_view(record)

    def _done(self, terminal: str, payment_id: str) -> None:
        self.registry.release(terminal, payment_id)
        self._running.pop(payment_id, None)

    def _finish(self, record: PaymentRecord, outcome: Outcome) -> "Deferred[PaymentRecord]":
        state = outcome.state
        if record.state == states.ACCEPTED and state not in (states.FAILED,):
            # The driver never asked to send, so the terminal never saw the request: whatever the driver
            # says, nothing can have been charged.
            self.log.error("Driver reported {state} without sending; recording failed", state=state,
                           payment_id=record.id)
            state = states.FAILED
        moved = record.moved_to(state, outcome.code, outcome.message, dict(outcome.details), self._clock.seconds())
        return self._transition(moved, actor="terminal")

    def _transition(self, record: PaymentRecord, actor: str) -> "Deferred[PaymentRecord]":
        body = {"event": "payment.state", "payment": payment_view(record)}

        def journaled(event: Event) -> PaymentRecord:
            self._log_state(record, record.client_id)
            self._publish(event)
            return record

        return self.journal.transition(record, body, actor).addCallback(journaled)

    def get(self, payment_id: object) -> dict[str, Any]:
        record = self.journal.get(payment_id) if isinstance(payment_id, str) else None
        if record is None:
            raise BridgeError("unknown_payment", f"There is no payment {payment_id!r} on this bridge.")
        return payment_view(record)

    def get_by_command(self, command_id: str) -> Optional[dict[str, Any]]:
        record = self.journal.get_by_command(command_id)
        return payment_view(record) if record else None

    # -- start-up -------------------------------------------------------------------------------

    @inlineCallbacks
    def recover(self):
        """Settle the payments a previous run left in flight: ``failed`` if never sent, else ``unknown``."""
        settled = []
        for record in self.journal.in_flight():
            now = self._clock.seconds()
            if record.state == states.ACCEPTED:
                moved = record.moved_to(
                    states.FAILED, "bridge_restarted",
                    "The bridge restarted before the payment reached the terminal. Nothing was charged.",
                    None, now)
            else:
                moved = record.moved_to(
                    states.UNKNOWN, "bridge_restarted",
                    "The bridge restarted while the terminal was handling this payment. Check the terminal's "
                    "receipt to see whether the customer was charged.",
                    None, now)
            yield self._transition(moved, actor="recovery")
            settled.append(moved)
        return settled

    def wait_idle(self) -> Deferred:
        """A Deferred that fires when every payment running now has been journaled (used at shutdown)."""
        from twisted.internet.defer import DeferredList

        return DeferredList([_wait(d) for d in self._running.values()])

    def _log_state(self, record: PaymentRecord, client_id: str) -> None:
        self.log.info(
            "Payment {payment_id} on {terminal}: {state} ({amount} {currency}){reason}",
            payment_id=record.id, terminal=record.terminal, state=record.state, amount=record.amount,
            currency=record.currency, client=client_id, code=record.reason_code,
            reason=f" - {record.reason_message}" if record.reason_message else "",
        )


def _wait(d: Deferred) -> Deferred:
    """A Deferred that fires (with None) when ``d`` fires, without touching ``d``'s own result chain."""
    waiter: Deferred = Deferred()

    def fire(result):
        if not waiter.called:
            waiter.callback(None)
        return result

    if d.called:
        return succeed(None)
    d.addBoth(fire)
    return waiter
