"""The payment service: validates, journals, drives a terminal, and tells subscribers every state change.

Order of things for one payment, and why:

1. validate the arguments (nothing is journaled for a bad command);
2. journal the payment as ``accepted`` (fsync) and tell the client;
3. the driver connects to the terminal; just before the first byte it asks, through ``before_send``, for the
   payment to be journaled ``in_progress`` (fsync, after ``accepted``), and only then writes;
4. the driver's outcome is journaled (fsync) and only then told.

A driver that says ``pay_while_accepting`` (it only connects before ``before_send``) is started before step 2:
when it asks ``before_send`` within ACCEPTED_ALONE_AFTER, steps 2 and 3's writes are one (one fsync, both
states or neither); else ``accepted`` is written alone then, or when the driver ends, whichever comes first.

So after a crash, ``accepted`` means the terminal never saw the request (``failed``) and ``in_progress`` means
it may have (``unknown``).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from datetime import datetime, timezone
from typing import Any, Callable, Optional, cast

from twisted.internet.defer import Deferred, DeferredList, fail, inlineCallbacks, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from bridge.core import safety, states
from bridge.core.backoff import backoff
from bridge.core.deferreds import follow
from bridge.core.faults import checkpoint
from bridge.core.journal import Event, Journal, PaymentRecord
from bridge.core.money import Currency, currency, validate_amount
from bridge.core.reactor_types import Clock, DelayedCall
from bridge.core.registry import TerminalRegistry
from bridge.errors import BridgeError
from bridge.core.contract import (CARD, CHEQUE, DEBIT, PAY_WHILE_ACCEPTING, REFUND, Outcome, PaymentRequest,
                                  TerminalDriver)

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


def new_payment_id(now: Callable[[], float] = time.time) -> str:
    """A new payment id: ``pay_`` and 32 hex digits, the first 12 the time in milliseconds, the other 20 random.

    Ids made later sort after earlier ones (to the millisecond), so each new payment's row, and its events' and
    transitions' index entries, go at the end of the journal's indexes: the pages a payment's writes touch are
    the same few recent ones whether the journal holds a thousand payments or two million (random ids put
    each insert on a page of its own somewhere in the file: a read and a page more in each fsync'd commit).
    Clients see an opaque string, as before (it was a random UUID's hex).  80 random bits: two ids of the same
    millisecond collide with a probability of about n² / 2^81."""
    return "pay_" + format(int(now() * 1000) & 0xFFFF_FFFF_FFFF, "012x") + os.urandom(10).hex()


def args_digest(terminal: str, kind: str, method: str, amount: int, currency_code: str) -> str:
    canonical = json.dumps([terminal, kind, method, amount, currency_code], separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class PaymentService:
    log = Logger()

    def __init__(self, journal: Journal, registry: TerminalRegistry, clock: Clock,
                 new_id: Callable[[], str] = new_payment_id) -> None:
        self.journal = journal
        self.registry = registry
        self._clock = clock
        self._new_id = new_id
        self._listeners: list[EventListener] = []
        # Payments between "command received" and "accepted is on disk", by (client id, command id): a duplicate
        # command arriving meanwhile waits for the first instead of starting a second payment.
        self._creating: dict[tuple[str, str], Deferred] = {}
        self._creating_ids: set[str] = set()  # their payment ids (one may be running already: pay_while_accepting)
        self._running: dict[str, _Running] = {}
        self._stopping = False

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

    def stop_taking(self) -> None:
        """Refuse new payments from now on (the bridge is stopping); the ones running go on to their end."""
        self._stopping = True

    def _check_taking(self) -> None:
        if self._stopping:
            raise BridgeError("bridge_stopping", "The bridge is stopping, so it started nothing. Send the payment "
                                                 "again once it is back (usually within a minute).")

    def start(self, client_id: str, command_id: object, args: dict[str, Any]) -> "Deferred[dict[str, Any]]":
        """Start a payment (or return the one this command id already started)."""
        try:
            self._check_taking()
            request = self._validate(command_id, args)
        except BridgeError as e:
            return fail(e)
        terminal, kind, method, amount, cur = request
        digest = args_digest(terminal, kind, method, amount, cur.code)
        assert isinstance(command_id, str)
        return self._start(client_id=client_id, command_id=command_id, terminal=terminal, kind=kind, method=method,
                           amount=amount, cur=cur, digest=digest, original=None)

    def refund(self, client_id: str, command_id: object, args: dict[str, Any],
               see_all: bool = False) -> "Deferred[dict[str, Any]]":
        """Refund an approved payment, in full or in part, on the terminal (or provider) that took it."""
        try:
            self._check_taking()
            if not isinstance(command_id, str) or not 0 < len(command_id) <= MAX_COMMAND_ID_LENGTH:
                raise BridgeError("bad_request", "The command id must be a non-empty string of at most 128 "
                                                 "characters.")
            original = self.record(args.get("payment_id"))
            if original.client_id != client_id and not see_all:
                raise BridgeError("unknown_payment", "There is no such payment for this client.")
            if original.kind != DEBIT or original.state != states.APPROVED:
                raise BridgeError("not_refundable", "Only an approved payment can be refunded; this one is "
                                                    f"{original.kind} {original.state}.")
            amount = validate_amount(args.get("amount", original.amount))
            cur = currency(original.currency)
            digest = args_digest(original.terminal, REFUND, original.method, amount, cur.code) + ":" + original.id
            existing = self.journal.get_by_command(client_id, command_id)
            if existing is None:
                refunded = self.journal.refunded_amount(original.id)
                if amount > original.amount - refunded:
                    raise BridgeError("refund_too_large", f"At most {original.amount - refunded} (minor units) "
                                                          "of this payment is left to refund.")
        except BridgeError as e:
            return fail(e)
        origin = {"payment_id": original.id, "amount": original.amount, "details": original.details}
        return self._start(client_id=client_id, command_id=command_id, terminal=original.terminal, kind=REFUND,
                           method=original.method, amount=amount, cur=cur, digest=digest, original=origin)

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
    def _start(self, *, client_id: str, command_id: str, terminal: str, kind: str, method: str, amount: int,
               cur: Currency, digest: str, original: Optional[dict[str, Any]]) -> Any:
        # Command ids are each client's own: another client's use of the same id is no concern of this one.
        key = (client_id, command_id)
        pending = self._creating.get(key)
        if pending is not None:
            yield _wait(pending)
        existing = self.journal.get_by_command(client_id, command_id)
        if existing is not None:
            if existing.args_digest != digest:
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
            details={"refund_of": original["payment_id"]} if original else {}, created=now, updated=now,
        )
        creating: Deferred = Deferred()
        self._creating[key] = creating
        self._creating_ids.add(payment_id)
        view = payment_view(record)  # the event's and the reply's (sent as they are, never changed)
        request = PaymentRequest(payment_id=record.id, kind=kind, amount=amount, currency=cur, method=method,
                                 original=original)
        running = _Running(record, driver, view)
        try:
            if getattr(driver, PAY_WHILE_ACCEPTING, False):
                # A driver that only opens a connection before before_send (contract.PAY_WHILE_ACCEPTING) starts
                # now, and "accepted" waits for it a moment: if the terminal is ready to take the request by
                # then, "accepted" and "in_progress" are journaled in one write (one fsync, not two).  Otherwise
                # "accepted" is written alone when the driver ends or ACCEPTED_ALONE_AFTER has passed, whichever
                # comes first, so that the client soon hears of the payment (and can cancel it) even when the
                # terminal's connection hangs.
                self._run(running, request)
                if not running.accepted_submitted:
                    running.alone_call = self._clock.callLater(ACCEPTED_ALONE_AFTER, self._write_accepted,
                                                               running)
            else:
                self._write_accepted(running)
            events = yield running.written
        except BaseException:
            if running.started:  # the driver ends without sending (before_send fails), then frees the terminal
                running.accepted_failed(Failure())
            else:
                self.registry.release(terminal, payment_id)
            raise
        finally:
            running.cancel_alone_call()
            del self._creating[key]
            self._creating_ids.discard(payment_id)
            creating.callback(None)
        checkpoint("payment.after_write.accepted")
        sending = running.record
        if len(events) > 1:
            # in_progress was journaled with it: the driver sends first, then the client is told of both (the
            # terminal works on the request meanwhile)
            checkpoint("payment.after_write.in_progress")
            running.may_send.callback(None)
            self._publish(events[0])
            self._publish(events[1])
            running.accepted.callback(None)  # an end the driver reported meanwhile is journaled from now on
        else:
            self._publish(events[0])  # before in_progress can be: a client hears the events in their order
            # then let a waiting driver go on: its in_progress write starts while the log line and reply are made
            running.accepted.callback(None)
        self._log_state(record, client_id)
        if len(events) > 1:
            self._log_state(sending, client_id)
        if not running.started:
            self._run(running, request)
        return view

    def _write_accepted(self, running: "_Running", sending: Optional[PaymentRecord] = None) -> None:
        """Hand "accepted" to the journal (with ``sending``, the payment's in_progress record, when the driver is
        ready to send: both in one write); ``running.written`` fires with the events once on disk."""
        running.cancel_alone_call()
        record, body = running.record, {"event": "payment.state", "payment": running.view}
        checkpoint("payment.before_write.accepted")
        written: Deferred
        if sending is None:
            written = self.journal.create(record, body, actor=record.client_id).addCallback(lambda e: (e,))
        else:
            checkpoint("payment.before_write.in_progress")
            moving: PaymentRecord = sending  # named apart: Debian's mypy (1.0) forgets in a closure it is not None
            written = self.journal.create_and_move(
                record, body, record.client_id, moving,
                {"event": "payment.state", "payment": payment_view(moving)}, "bridge")

            def moved(events: tuple[Event, Event]) -> tuple[Event, Event]:
                running.update(moving)
                return events

            written.addCallback(moved)
        running.accepted_submitted = True
        written.chainDeferred(running.written)

    def _run(self, running: "_Running", request: PaymentRequest) -> None:
        """Hand the payment to its driver; its outcome is journaled when it ends (if "accepted" was)."""
        record = running.record
        self._running[record.id] = running
        running.started = True

        def before_send(details: Optional[dict[str, Any]] = None) -> Deferred:
            if running.accepted_error is not None:
                return fail(running.accepted_error)
            if not running.accepted_submitted:  # "accepted" not written yet: journal in_progress with it
                sending = running.record.moved_to(states.IN_PROGRESS, None, None, details, self._clock.seconds())
                self._write_accepted(running, sending)
                return follow(running.may_send).addCallback(let_send)
            if running.accepted.called:
                return send_now(None, details)
            return follow(running.accepted).addCallback(send_now, details)

        def send_now(_: Any, details: Optional[dict[str, Any]]) -> Deferred:
            if running.cancel_requested_by:
                return fail(_cancelled_before_send())
            moved = running.record.moved_to(states.IN_PROGRESS, None, None, details, self._clock.seconds())
            return self._transition(moved, actor="bridge").addCallback(running.update).addCallback(let_send)

        def let_send(result: Any) -> Any:
            # in_progress is on disk.  A cancel that came while it was being written is still in time: nothing has
            # left (it was answered "before_send").
            if running.cancel_requested_by:
                raise _cancelled_before_send()
            running.sent_at = self._clock.seconds()
            return result

        def ended(outcome: Outcome) -> Any:
            # A driver may end before "accepted" is on disk (a terminal that refuses the connection at once):
            # its end is journaled after it, and not at all if it could not be (the client was told why).
            if running.accepted_error is not None:
                return None
            if not running.accepted_submitted:
                self._write_accepted(running)
            if not running.accepted.called:
                return follow(running.accepted).addCallbacks(lambda _: self._finish(running, outcome),
                                                             lambda _: None)
            return self._finish(running, outcome)

        def driver_failed(failure: Failure) -> Outcome:
            # The contract says a driver's Deferred never fails (nor does pay raise): one that does is a bug, and
            # the payment still ends by the safety rule, failed if never sent, unknown if it may have been.
            return safety.crashed(failure, self.log, record.id, record.terminal,
                                  sent=running.may_have_sent, may_have_paid=CHECK_RECEIPT)

        run = maybeDeferred(running.driver.pay, request, before_send).addErrback(driver_failed)
        running.finished = run
        run.addCallback(ended)
        run.addErrback(lambda f: self.log.failure("Payment {payment_id} could not be finished", f,
                                                  payment_id=record.id))
        run.addBoth(lambda _: self._done(record.terminal, record.id))

    def _done(self, terminal: str, payment_id: str) -> None:
        self.registry.release(terminal, payment_id)
        self._running.pop(payment_id, None)

    def _finish(self, running: "_Running", outcome: Outcome) -> "Deferred[PaymentRecord]":
        record, state, code, message = running.record, outcome.state, outcome.code, outcome.message
        if not running.may_have_sent:
            # The driver was never let send (a cancel may have come while in_progress was written), so the
            # terminal never saw the request: whatever the driver says, nothing can have been charged.
            if code == CANCELLED_BEFORE_SEND:
                state = states.CANCELLED
            elif state != states.FAILED:
                self.log.error("Driver reported {state} without sending; recording failed", state=state,
                               payment_id=record.id)
                state = states.FAILED
        details = dict(outcome.details)
        if running.cancel_requested_by:
            details["cancel_requested_by"] = running.cancel_requested_by
        moved = record.moved_to(state, code, message, details, self._clock.seconds())
        return self._journal_end(moved)

    def _journal_end(self, record: PaymentRecord, attempt: int = 0) -> "Deferred[PaymentRecord]":
        """Journal a payment's end, trying again while the journal refuses (disk full, read-only): the end is
        told only once it is on disk, and must be told once it can be.  The terminal stays reserved meanwhile."""

        def again(failure: Any) -> Deferred:
            failure.trap(BridgeError)
            delay = _END_RETRY(attempt)
            if self.journal.closed:  # the bridge is stopping: the next start settles the payment
                return failure
            self.log.warn("Could not journal payment {payment_id} as {state}: {error} Trying again in {delay} s.",
                          payment_id=record.id, terminal=record.terminal, state=record.state,
                          code=failure.value.code, error=failure.value.message, delay=delay)
            return deferLater(cast(IReactorTime, self._clock), delay, self._journal_end, record, attempt + 1)

        return self._transition(record, actor="terminal").addErrback(again)

    def _transition(self, record: PaymentRecord, actor: str) -> "Deferred[PaymentRecord]":
        body = {"event": "payment.state", "payment": payment_view(record)}

        def journaled(event: Event) -> PaymentRecord:
            checkpoint("payment.after_write." + record.state)
            self._publish(event)
            self._log_state(record, record.client_id)  # after: the client need not wait for the log line
            return record

        checkpoint("payment.before_write." + record.state)
        return self.journal.transition(record, body, actor).addCallback(journaled)

    def record(self, payment_id: object) -> PaymentRecord:
        record = self.journal.get(payment_id) if isinstance(payment_id, str) else None
        if record is None:
            raise BridgeError("unknown_payment", f"There is no payment {payment_id!r} on this bridge.")
        return record

    def get(self, payment_id: object) -> dict[str, Any]:
        return payment_view(self.record(payment_id))

    # -- the reads a client's session needs (events, acknowledgements, ownership) -----------------

    def owner(self, payment_id: str) -> Optional[str]:
        """The id of the client that started the payment; None when there is no such payment."""
        record = self.journal.get(payment_id)
        return record.client_id if record is not None else None

    def events_after(self, client_id: str, seq: int, limit: int) -> list[Event]:
        """The journaled events for ``client_id`` after ``seq``, oldest first, at most ``limit``."""
        return self.journal.events_after(client_id, seq, limit=limit)

    def acked(self, client_id: str) -> int:
        """The last event seq ``client_id`` acknowledged (0 for none)."""
        return self.journal.acked(client_id)

    def last_seq(self) -> int:
        """The seq of the newest journaled event."""
        return self.journal.last_seq()

    def ack_soon(self, client_id: str, seq: int) -> None:
        """Record ``client_id``'s acknowledgement of ``seq`` (written within a second, not at once)."""
        self.journal.ack_soon(client_id, seq)

    def cancel(self, payment_id: str, actor: str) -> "Deferred[dict[str, Any]]":
        """Ask for a payment to be cancelled.

        Before the request reached the terminal, the bridge simply does not send it (``cancelled``, certain).
        After, only the terminal can cancel: the driver is asked to (a Caisse-AP terminal needs the cashier to
        press its red button), and the payment ends with whatever the terminal then answers.  A cancellation
        is never reported before the terminal confirmed it.
        """
        try:
            record = self.record(payment_id)
        except BridgeError as e:
            return fail(e)
        running = self._running.get(record.id)
        if states.is_final(record.state) or running is None:
            return fail(BridgeError("payment_final",
                                    f"The payment is already {record.state}; it cannot be cancelled."))
        running.cancel_requested_by = actor
        self.log.info("Cancel of payment {payment_id} requested by {client}", payment_id=record.id, client=actor,
                      terminal=record.terminal, state=record.state)
        if not running.may_have_sent:
            return succeed({"payment": payment_view(running.record), "cancel": "before_send",
                            "message": "The payment will not be sent to the terminal."})

        def answered(message: Optional[str]) -> dict[str, Any]:
            # cast: Debian's mypy (1.0) forgets inside a closure that running is not None
            if message is None:
                message = ("Cancel the payment on the terminal itself; the bridge reports what the terminal "
                           "answers.")
                return {"payment": payment_view(cast(_Running, running).record), "cancel": "on_terminal",
                        "message": message}
            return {"payment": payment_view(cast(_Running, running).record), "cancel": "requested", "message": message}

        asked = cast("Deferred[Optional[str]]", maybeDeferred(running.driver.cancel, record.id))  # a Deferred unwrapped
        return asked.addCallback(answered)

    def resolve(self, payment_id: object, outcome: object, actor: str, note: object,
                details: Optional[dict[str, Any]] = None) -> "Deferred[dict[str, Any]]":
        """Settle an ``unknown`` payment with what the terminal's receipt shows; journaled with who and when."""
        try:
            record = self.record(payment_id)
        except BridgeError as e:
            return fail(e)
        if record.state != states.UNKNOWN:
            return fail(BridgeError("not_unknown", f"Only a payment in state unknown can be resolved; this one is "
                                                   f"{record.state}."))
        if outcome not in states.RESOLVED_STATES:
            return fail(BridgeError("bad_request", "'outcome' must be approved, declined, cancelled or failed."))
        if not isinstance(note, str) or not note.strip() or len(note) > 500:
            return fail(BridgeError("bad_request", "Say in 'note' what the resolution is based on (e.g. "
                                                   "'receipt shows approved, auth 123456'), 500 characters at most."))
        extra = {"resolved_by": actor, "resolution_note": note.strip(),
                 "resolved_from": {"code": record.reason_code, "message": record.reason_message}}
        extra.update(details or {})
        words = {states.APPROVED: "Resolved as approved from the terminal's receipt.",
                 states.DECLINED: "Resolved as declined from the terminal's receipt.",
                 states.CANCELLED: "Resolved as cancelled from the terminal's receipt.",
                 states.FAILED: "Resolved as not charged from the terminal's receipt."}
        moved = record.moved_to(str(outcome), "resolved", words[str(outcome)], extra, self._clock.seconds())
        return self._transition(moved, actor=actor).addCallback(payment_view)

    def list(self, client_id: Optional[str], terminal: Optional[str] = None, state: Optional[str] = None,
             since: Optional[float] = None, until: Optional[float] = None, limit: int = 50,
             cursor: Optional[str] = None) -> dict[str, Any]:
        """A page of payments, newest first.  ``client_id`` None lists every client's."""
        before = _parse_cursor(cursor) if cursor else None
        records = self.journal.list(terminal=terminal, state=state, since=since, until=until, limit=limit + 1,
                                    before=before, client_id=client_id)
        page = records[:limit]
        more = len(records) > limit
        return {"payments": [payment_view(r) for r in page],
                "next_cursor": f"{page[-1].created!r}|{page[-1].id}" if more and page else None}

    def prune(self, retention_seconds: float) -> "Deferred[int]":
        """Forget final payments older than the retention time; ``unknown`` ones are always kept."""
        return self.journal.prune(self._clock.seconds() - retention_seconds)

    def get_by_command(self, client_id: str, command_id: str) -> Optional[dict[str, Any]]:
        """The payment ``client_id`` started with ``command_id``, as clients see it, or None."""
        record = self.journal.get_by_command(client_id, command_id)
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
                outcome = yield self._ask_provider(record)
                if outcome is not None:
                    moved = record.moved_to(outcome.state, outcome.code, outcome.message, dict(outcome.details),
                                            self._clock.seconds())
                else:
                    moved = record.moved_to(
                        states.UNKNOWN, "bridge_restarted",
                        "The bridge restarted while the terminal was handling this payment. Check the terminal's "
                        "receipt to see whether the customer was charged.",
                        None, now)
            yield self._transition(moved, actor="recovery")
            settled.append(moved)
        return settled

    @inlineCallbacks
    def _ask_provider(self, record: PaymentRecord):
        """What the terminal's provider says of a payment whose outcome the bridge lost, or None."""
        try:
            driver = self.registry.driver(record.terminal)
        except BridgeError:
            return None
        try:
            outcome = yield maybeDeferred(driver.recover, record.id, record.details)
        except Exception:
            self.log.failure("Could not ask the provider about payment {payment_id}", payment_id=record.id)
            return None
        if outcome is None or outcome.state not in states.FINAL_STATES:
            return None
        return outcome

    def sent_at(self, payment_id: str) -> Optional[float]:
        """When the running payment's driver was let send its request (the clock's seconds), or None: not let
        send, or not running.  A payment's final event is told while it still runs, so its listeners can ask."""
        running = self._running.get(payment_id)
        return None if running is None else running.sent_at

    def running(self) -> int:
        """How many payments are between their first journal write and their end's."""
        return len(self._creating_ids | self._running.keys())

    @inlineCallbacks
    def wait_idle(self):
        """Fires when no payment is running any more, each one's end journaled (used at shutdown, after
        :meth:`stop_taking`); a payment still being created when this is called is waited for too."""
        while True:
            waits = [_wait(d) for d in self._creating.values()]
            waits += [_wait(r.finished) for r in self._running.values() if r.finished is not None]
            if not waits:
                return
            yield DeferredList(waits)

    def _log_state(self, record: PaymentRecord, client_id: str) -> None:
        # One line when a payment is taken and one when it ends, at info; the step between at debug (a log
        # line costs about as much as a journal write on the reactor).  unknown is a warning: someone must look.
        if record.state == states.UNKNOWN:
            emit = self.log.warn
        elif record.state == states.IN_PROGRESS:
            emit = self.log.debug
        else:
            emit = self.log.info
        emit(
            "Payment {payment_id} on {terminal}: {state} ({amount} {currency}){reason}",
            payment_id=record.id, terminal=record.terminal, state=record.state, amount=record.amount,
            currency=record.currency, client=client_id, code=record.reason_code,
            reason=f" - {record.reason_message}" if record.reason_message else "",
        )


CANCELLED_BEFORE_SEND = "cancelled_before_send"
#: Seconds "accepted" waits for a pay_while_accepting driver to be ready to send (its terminal's connection up)
#: before it is journaled alone: a connection on a shop's LAN takes about a millisecond, one that does not come
#: (a terminal switched off) up to the driver's connect timeout, which the client need not wait for.
ACCEPTED_ALONE_AFTER = 0.05
#: What the cashier is told to do when a driver failed after its request may have left.
CHECK_RECEIPT = "Check the terminal's receipt to see whether the customer was charged."
#: The longest wait between two tries to journal a payment's end that the journal refused.
RETRY_MAX = 60.0
_END_RETRY = backoff(1.0, RETRY_MAX)


class _Running:
    """A payment between "accepted" and its final state, as the service tracks it."""

    def __init__(self, record: PaymentRecord, driver: TerminalDriver, view: dict[str, Any]) -> None:
        self.record = record
        self.driver = driver
        #: The payment as "accepted" shows it to clients (its event and the reply to the command).
        self.view = view
        #: Whether the driver has been handed the payment.
        self.started = False
        self.finished: Optional[Deferred] = None
        self.cancel_requested_by: Optional[str] = None
        #: Whether "accepted" has been handed to the journal, and a Deferred that fires with its events once on
        #: disk (one, or two when in_progress went with it), for the command that started the payment.
        self.accepted_submitted = False
        self.written: Deferred = Deferred()
        #: The call that writes "accepted" alone if the driver is not ready to send in time.
        self.alone_call: Optional[DelayedCall] = None
        #: When the driver was let send its request (before_send answered), or None: until then a cancel is
        #: certain, and an end the driver reports cannot have charged anything.
        self.sent_at: Optional[float] = None
        #: Fires once "accepted" is on disk and told: a driver's before_send waits for it, and so does its end.
        self.accepted: Deferred = Deferred()
        #: Fires once "accepted" and "in_progress" are on disk when they were written together: the driver's
        #: before_send waits for it (the driver sends, then the client is told).
        self.may_send: Deferred = Deferred()
        #: Why "accepted" could not be journaled (then nothing is sent, and nothing more journaled).
        self.accepted_error: Optional[Failure] = None

    @property
    def may_have_sent(self) -> bool:
        return self.sent_at is not None

    def accepted_failed(self, error: Failure) -> None:
        """"accepted" could not be journaled: whoever waits for it hears why, and so does a later before_send."""
        self.accepted_error = error
        for waited in (self.accepted, self.may_send):
            waited.errback(error)
            waited.addErrback(lambda _: None)  # the failure is the client's reply, not an unhandled error

    def cancel_alone_call(self) -> None:
        if self.alone_call is not None and self.alone_call.active():
            self.alone_call.cancel()
        self.alone_call = None

    def update(self, record: PaymentRecord) -> PaymentRecord:
        self.record = record
        return record


def _cancelled_before_send() -> BridgeError:
    return BridgeError(CANCELLED_BEFORE_SEND, "The payment was cancelled before it reached the terminal. Nothing "
                                              "was charged.")


def _parse_cursor(cursor: object) -> tuple[float, str]:
    try:
        assert isinstance(cursor, str)
        created, payment_id = cursor.split("|", 1)
        return float(created), payment_id
    except (AssertionError, ValueError):
        raise BridgeError("bad_request", "'cursor' must be a next_cursor from a previous payment.list.") from None



def _wait(d: Deferred) -> Deferred:
    """A Deferred that fires (with None) when ``d`` fires, without touching ``d``'s own result chain."""
    return follow(d).addBoth(lambda _: None)
