"""A Stripe Terminal smart reader (WisePOS E, S700/S710), driven server-side through Stripe's API.

One payment, top-down (docs/stripe.md has the why of each step):

1. the amount is checked against Stripe's minimum for the currency, before any call;
2. a PaymentIntent is created (card_present, manual capture, idempotency key from the payment id) - it charges
   nobody, so a crash here leaves the payment ``accepted`` and recovery calls it ``failed``, rightly;
3. ``before_send({"payment_intent": ...})`` journals the payment ``in_progress`` with the PaymentIntent id;
4. ``process_payment_intent`` hands it to the reader;
5. the reader's action and the PaymentIntent are polled (no webhook reaches a shop's LAN) until the
   PaymentIntent is authorised (``requires_capture``), which is then captured: ``approved`` only once the
   capture succeeded.  A decline or a stopped action ends the payment; the PaymentIntent is then voided so
   nothing can charge it later.  Every wait is capped: then the reader's action is cancelled and the bridge
   reports what Stripe says is true; ``unknown`` only when Stripe cannot be asked.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping, Optional, cast

from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from bridge.config import TerminalConfig
from bridge.core import safety, states
from bridge.core.money import format_major
from bridge.errors import BridgeError
from bridge.core.contract import REFUND, BeforeSend, ITerminalDriver, Outcome, PaymentRequest, TerminalStatus
from bridge.core.reactor_types import Clock, DelayedCall, ThreadedClock
from bridge.terminals.stripe.api import MESSAGES, MINIMUM_CHARGE, TERMINAL_CODES, StripeAPI, StripeCallError
from bridge.terminals.stripe.options import parse_stripe_options, read_api_key

_NOTHING_CHARGED = safety.NOTHING_CHARGED
_ASK_STRIPE = ("Stripe could not be asked what became of the payment: the bridge asks again at its next start; "
               "until then check the payment in the Stripe Dashboard before trying again.")
_WORDS = {
    "terminal_busy": "The card reader is busy with another payment. Wait for it to finish.",
    "reader_not_found": "No Stripe reader matches this terminal's reader id or serial number. This is a "
                        "configuration error: ask the person who installed the bridge.",
    "stripe_key_missing": "The bridge has no usable Stripe API key for this reader. This is a configuration "
                          "error: ask the person who installed the bridge.",
    "customer_cancelled": "The customer cancelled the payment on the reader. Nothing was charged.",
    "cancelled": "The payment was stopped on the reader. Nothing was charged.",
    "payment_timeout": "No card was presented in time, so the payment was stopped. Nothing was charged.",
    "reader_went_offline": "The card reader went offline during the payment, so the payment was stopped. Nothing "
                           "was charged. Check that the reader is switched on and connected to the internet, "
                           "then try again.",
    "capture_unconfirmed": "The card was accepted but Stripe has not confirmed the payment yet.",
    "capture_failed": "The card was accepted but Stripe could not complete the payment, so the bridge released "
                      "it. Nothing was charged; try again.",
    "refund_needs_original": "A Stripe reader can only refund an earlier card payment: refund that payment (in "
                             "the POS, refund its order; on the bridge, terminal-bridge refund PAYMENT_ID).",
    "bridge_restarted": "The bridge restarted before the card was presented, so the payment was stopped. "
                        "Nothing was charged.",
    "refund_not_sent": "The bridge restarted before the refund reached Stripe. Nothing was refunded.",
}

#: Reader action failure codes that are no decline by the bank.
_NOT_DECLINES = frozenset({"customer_canceled", "connection_error", *TERMINAL_CODES})


def _outcome(state: str, code: str, message: Optional[str] = None, **details: Any) -> Outcome:
    # cast: Debian's mypy (1.0) takes ``a.get(k) or b.get(k, k)`` for an Optional[str]
    return Outcome(state, code, cast(str, message or _WORDS.get(code) or MESSAGES.get(code, code)), details)


def _obj(value: Any) -> Mapping[str, Any]:
    """``value`` when it is a JSON object, else an empty one: Stripe's answers are read, never trusted."""
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> Optional[str]:
    return value if isinstance(value, str) else None


def _action_pi(reader: Optional[Mapping[str, Any]]) -> Optional[str]:
    action = _obj(_obj(reader).get("action"))
    if action.get("type") != "process_payment_intent":
        return None
    pi = _obj(action.get("process_payment_intent")).get("payment_intent")
    return _text(_obj(pi).get("id") if isinstance(pi, dict) else pi)


def _iso_ms(ms: Any) -> Optional[str]:
    if not isinstance(ms, (int, float)) or isinstance(ms, bool):
        return None
    try:
        return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    except (ValueError, OverflowError, OSError):
        return None


def _charge_details(pi: Mapping[str, Any]) -> dict[str, Any]:
    """What the bridge keeps of an authorised PaymentIntent: ids and the masked card, never a full number."""
    details: dict[str, Any] = {"payment_intent": _text(pi.get("id"))}
    charge = pi.get("latest_charge")
    if not isinstance(charge, (dict, str)):
        charges = _obj(pi.get("charges")).get("data")
        charge = charges[0] if isinstance(charges, list) and charges else None
    if isinstance(charge, dict):
        card = _obj(_obj(charge.get("payment_method_details")).get("card_present"))
        details["charge"] = _text(charge.get("id"))
        if isinstance(card.get("last4"), str) and card["last4"]:
            details["card_masked"] = "############" + card["last4"]
        for key, value in (("card_brand", card.get("brand")), ("entry_mode", card.get("read_method")),
                           ("authorisation", _obj(card.get("receipt")).get("authorization_code"))):
            if isinstance(value, str) and value:
                details[key] = value
    elif isinstance(charge, str):
        details["charge"] = charge
    received = pi.get("amount_received")
    if isinstance(received, int) and not isinstance(received, bool) and received:
        details["amount_authorised"] = received
    return details


@dataclass
class _Current:
    payment_id: str
    pi_id: Optional[str] = None
    sent: bool = False
    cancel_requested: bool = False
    wake: Optional[tuple[Deferred, DelayedCall]] = field(default=None, repr=False)


@implementer(ITerminalDriver)
class StripeReaderDriver:
    """One Stripe smart reader, known by its reader id (``tmr_...``) or its serial number."""

    kind = "stripe"
    _log = Logger()

    def __init__(self, name: str, reactor: Clock, api: Optional[StripeAPI], *, reader_id: Optional[str] = None,
                 serial_number: Optional[str] = None, clock: Optional[Clock] = None, poll_interval: float = 1.0,
                 payment_timeout: float = 120.0, cancel_grace: float = 30.0, status_interval: float = 30.0,
                 busy_retries: int = 3, timeout_retries: int = 3,
                 config_error: Optional[str] = None) -> None:
        if not (reader_id or serial_number):
            raise ValueError("a Stripe reader needs its reader id or its serial number")
        self.name = name
        self.api = api
        self._reactor = reactor
        self._clock = clock if clock is not None else reactor
        self._reader_id = reader_id
        self._serial = serial_number
        self._poll_interval = poll_interval
        self._payment_timeout = payment_timeout
        self._cancel_grace = cancel_grace
        self._status_interval = status_interval
        self._busy_retries = busy_retries
        self._timeout_retries = timeout_retries
        self._config_error = config_error if api is not None else (config_error or "stripe_key_missing")
        self._current: Optional[_Current] = None
        self._lookup_waiters: Optional[list[Deferred]] = None
        self._reader_info: dict[str, Any] = {}
        self._last_error: Optional[str] = None
        self._status_loop: Optional[LoopingCall] = None

    # -- life cycle (the daemon calls these) ----------------------------------------------------

    def start(self) -> None:
        """Start the thread pool and the status refresh; called on the reactor thread."""
        if self.api is None:
            return
        self.api.start()
        if self._status_interval > 0 and self._status_loop is None:
            self._status_loop = LoopingCall(self.refresh_status)
            self._status_loop.clock = cast(IReactorTime, self._clock)
            self._status_loop.start(self._status_interval, now=True).addErrback(
                lambda f: self._log.failure("Status refresh of {terminal} stopped", f, terminal=self.name))

    def stop(self) -> "Deferred[None]":
        """Stop the status refresh and the thread pool; fires once the Stripe calls under way are over."""
        if self._status_loop is not None and self._status_loop.running:
            self._status_loop.stop()
        self._status_loop = None
        return self.api.stop() if self.api is not None else succeed(None)

    # -- status ---------------------------------------------------------------------------------

    def status(self) -> TerminalStatus:
        """From the reader as last read from Stripe (:meth:`refresh_status`): down while Stripe says the reader is
        offline or the driver cannot call Stripe (a missing key); ``unknown`` until the first read."""
        info = self._reader_info
        online = cast(Mapping[Any, bool], {"online": True, "offline": False}).get(info.get("status"))
        up = False
        if self._config_error:
            state, detail = "error", cast(str, _WORDS.get(self._config_error) or MESSAGES.get(self._config_error, ""))
        elif self._current is not None:
            state, detail, up = "busy", f"Payment {self._current.payment_id} in progress.", True
        elif online is False:
            state, detail = "offline", MESSAGES["reader_offline"]
        elif not info:
            state, detail, up = "unknown", "The reader's state has not been read from Stripe yet.", True
        else:
            state, detail, up = "idle", "Ready.", True
        return TerminalStatus(state, detail, up=up, facts={
            "reader": self._reader_id or info.get("id"), "serial_number": info.get("serial_number") or self._serial,
            "label": info.get("label"), "device_type": info.get("device_type"), "online": online,
            "last_seen": _iso_ms(info.get("last_seen_at")), "location": info.get("location"),
            "last_error": self._last_error})

    @inlineCallbacks
    def refresh_status(self) -> Any:
        """Read the reader from Stripe into the cache ``status()`` shows (on a timer, not on every call).

        Skipped while a payment is being followed: its polls read the reader every second and keep the cache
        fresh, and a second read would only spend Stripe's rate limit (docs/performance.md, Stripe polling)."""
        if self.api is None or self._config_error:
            return
        if self._current is not None and self._current.sent:
            return
        try:
            reader_id = yield self._find_reader()
            reader = yield self.api.get_reader(reader_id)
        except BridgeError as error:
            self._last_error = error.code
            self._log.info("Could not read Stripe reader {terminal}: {code}", terminal=self.name, code=error.code)
            return
        self._remember(reader)

    def _remember(self, reader: Mapping[str, Any]) -> None:
        self._reader_info = {k: _text(reader.get(k)) for k in ("id", "serial_number", "label", "device_type",
                                                              "status", "location")}
        self._reader_info["last_seen_at"] = reader.get("last_seen_at")
        self._last_error = None

    def _find_reader(self) -> "Deferred[str]":
        """The reader id: configured, or looked up once by serial number and kept."""
        if self._reader_id:
            return succeed(self._reader_id)
        assert self.api is not None and self._serial
        waiter: Deferred = Deferred()
        if self._lookup_waiters is not None:  # a lookup is under way: share it
            self._lookup_waiters.append(waiter)
            return waiter
        self._lookup_waiters = [waiter]

        def found(answer: Mapping[str, Any]) -> Any:
            readers = answer.get("data")
            first = _text(_obj(readers[0]).get("id")) if isinstance(readers, list) and readers else None
            if first is None:
                return Failure(BridgeError("reader_not_found", _WORDS["reader_not_found"]))
            self._reader_id = first
            self._log.info("Stripe reader {terminal}: serial {serial} is {reader}", terminal=self.name,
                           serial=self._serial, reader=self._reader_id)
            return self._reader_id

        def tell(result: Any) -> None:
            waiters, self._lookup_waiters = self._lookup_waiters or [], None
            for w in waiters:
                w.callback(result) if not isinstance(result, Failure) else w.errback(result)

        self.api.find_reader_by_serial(self._serial).addCallback(found).addBoth(tell)
        return waiter

    # -- payments -------------------------------------------------------------------------------

    def pay(self, request: PaymentRequest, before_send: BeforeSend) -> "Deferred[Outcome]":
        if self._current is not None:
            return succeed(_outcome(states.FAILED, "terminal_busy"))
        current = self._current = _Current(request.payment_id)
        run = self._refund if request.kind == REFUND else self._debit
        d: Deferred = maybeDeferred(run, request, before_send, current)
        d.addErrback(self._crashed, request, current)
        d.addCallback(self._done, request)
        return d

    @inlineCallbacks
    def _debit(self, request: PaymentRequest, before_send: BeforeSend, current: _Current) -> Any:
        minimum = MINIMUM_CHARGE.get(request.currency.code)
        if minimum is not None and request.amount < minimum:
            return _outcome(states.FAILED, "amount_too_small",
                            f"Stripe takes card payments of at least {format_major(minimum, request.currency)} "
                            f"{request.currency.code}.")
        if self._config_error:
            return _outcome(states.FAILED, self._config_error)
        assert self.api is not None
        try:
            reader_id = yield self._find_reader()
            pi = yield self.api.create_payment_intent(request.amount, request.currency.code, request.payment_id,
                                                      self._key(current, "pi"), f"terminal-bridge {self.name}")
        except BridgeError as error:
            return _outcome(states.FAILED, error.code, error.message)
        if _text(pi.get("id")) is None:
            # Nothing reached the reader; a PaymentIntent Stripe may have made charges nobody and lapses.
            self._log.warn("Payment {payment_id}: Stripe's answer to creating the PaymentIntent has no id; "
                           "nothing was sent to the reader", payment_id=request.payment_id, terminal=self.name)
            return _outcome(states.FAILED, "stripe_bad_answer", f"{MESSAGES['stripe_bad_answer']} "
                                                                f"{_NOTHING_CHARGED}")
        current.pi_id = pi["id"]
        try:
            yield maybeDeferred(before_send, {"payment_intent": pi["id"], "reader": reader_id})
        except Exception as error:
            yield self._void(current)
            return safety.not_sent(error, self._log, request.payment_id, self.name, device="the reader")
        current.sent = True
        self._log.info("Payment {payment_id}: PaymentIntent {pi} sent to reader {reader}",
                       payment_id=request.payment_id, pi=pi["id"], reader=reader_id, terminal=self.name,
                       state=states.IN_PROGRESS, amount=request.amount, currency=request.currency.code)
        refused = yield self._hand_to_reader(current, reader_id)
        if refused is not None:
            return refused
        outcome = yield self._follow(current, reader_id)
        return outcome

    @inlineCallbacks
    def _hand_to_reader(self, current: _Current, reader_id: str) -> Any:
        """process_payment_intent, with Stripe's advice for each error; an Outcome when the reader did not
        take the payment, None when it did."""
        assert self.api is not None and current.pi_id is not None
        attempt, busy_left, timeouts_left = 0, self._busy_retries, self._timeout_retries
        while True:
            try:
                # A returned error is stored by Stripe under its idempotency key, so each new attempt after an
                # error needs a new key; our own transport retries inside call() keep the key.
                yield self.api.process_payment_intent(reader_id, current.pi_id, self._key(current, f"ppi-{attempt}"))
                break
            except StripeCallError as error:
                attempt += 1
                if error.code == "reader_timeout":
                    # Can be a false negative: look at the reader before trying again.
                    reader = yield self._read(self.api.get_reader(reader_id))
                    if _action_pi(reader) == current.pi_id:
                        break
                    if timeouts_left > 0 and not current.cancel_requested:
                        timeouts_left -= 1
                        continue
                elif error.code == "reader_busy" and busy_left > 0 and not current.cancel_requested:
                    busy_left -= 1
                    yield self._pause(current, self._poll_interval)
                    continue
                elif error.code == "intent_invalid_state":
                    break  # the PaymentIntent has moved on (a replay after a lost answer): the poll sees where
                reason = _outcome(states.FAILED, error.code, f"{error.message} {_NOTHING_CHARGED}")
                if current.cancel_requested:
                    reason = _outcome(states.CANCELLED, "cancelled")
                # After a transport failure the reader may have the payment after all: only a void is sure.
                outcome = yield self._end(current, reason, must_void=error.retryable)
                return outcome
        if current.cancel_requested:  # the cashier cancelled while the reader was being asked
            yield self._read(self.api.cancel_action(reader_id))
        return None

    @inlineCallbacks
    def _follow(self, current: _Current, reader_id: str) -> Any:
        """Poll the reader and the PaymentIntent until the payment ends, within the payment timeout."""
        assert self.api is not None and current.pi_id is not None
        deadline = self._clock.seconds() + self._payment_timeout
        grace_used = False
        while True:
            yield self._pause(current, self._poll_interval)
            reader, pi = yield gatherResults([self._read(self.api.get_reader(reader_id)),
                                              self._read(self._get_pi(current.pi_id))])
            if reader is not None:
                self._remember(reader)
            if pi is not None and pi.get("status") in ("requires_capture", "succeeded", "canceled"):
                outcome = yield self._from_pi(current, pi)
                return outcome
            if reader is not None and pi is not None and pi.get("status") == "requires_payment_method":
                action = _obj(reader.get("action"))
                if _action_pi(reader) != current.pi_id:
                    # Our action is gone: cancelled (by us or on the reader) or replaced by another.
                    outcome = yield self._end(current, _outcome(states.CANCELLED, "cancelled"))
                    return outcome
                if action.get("status") == "failed":
                    outcome = yield self._end(current, self._declined(pi, action))
                    return outcome
            if reader is not None and reader.get("status") == "offline":
                # Stripe marks a reader offline after about two minutes without a sign of it: no card can be
                # authorised through it now.  Stop at once; only a void makes "nothing charged" certain.
                self._log.warn("Stripe reader {terminal} went offline during payment {payment_id}",
                               terminal=self.name, payment_id=current.payment_id)
                yield self._read(self.api.cancel_action(reader_id))
                outcome = yield self._end(current, _outcome(states.FAILED, "reader_offline",
                                                            _WORDS["reader_went_offline"]), must_void=True)
                return outcome
            if self._clock.seconds() < deadline:
                continue
            # The cap: stop the reader, then report what Stripe says.
            try:
                yield self.api.cancel_action(reader_id)
            except StripeCallError as error:
                if error.code == "reader_busy" and not grace_used:
                    grace_used = True  # a card is being authorised: give the bank its answer
                    deadline = self._clock.seconds() + self._cancel_grace
                    continue
                self._log.warn("Could not cancel the reader action of {payment_id}: {code}",
                               payment_id=current.payment_id, code=error.code, terminal=self.name)
            pi = yield self._read(self._get_pi(current.pi_id))
            if pi is not None and pi.get("status") in ("requires_capture", "succeeded", "canceled"):
                outcome = yield self._from_pi(current, pi)
                return outcome
            outcome = yield self._end(current, _outcome(states.CANCELLED, "payment_timeout"), must_void=True)
            return outcome

    def _declined(self, pi: Mapping[str, Any], action: Mapping[str, Any]) -> Outcome:
        error = _obj(pi.get("last_payment_error"))
        failure = _text(action.get("failure_code")) or _text(error.get("code"))
        said = _text(error.get("message")) or _text(action.get("failure_message")) or "The card was declined."
        if failure == "customer_canceled":
            return _outcome(states.CANCELLED, "customer_cancelled", payment_intent=pi.get("id"))
        if failure in _NOT_DECLINES and not error:
            code = TERMINAL_CODES.get(failure)
            words = f"{MESSAGES[code]} {_NOTHING_CHARGED}" if code else \
                f"The reader could not finish the payment ({said}). {_NOTHING_CHARGED}"
            return _outcome(states.FAILED, code or "reader_error", words, payment_intent=pi.get("id"),
                            stripe_code=failure)
        details = {"payment_intent": pi.get("id"), "stripe_code": _text(error.get("code")) or failure,
                   "decline_code": _text(error.get("decline_code")), "stripe_message": said}
        return Outcome(states.DECLINED, "card_declined", f"The card was declined: {said}",
                       {k: v for k, v in details.items() if v})

    @inlineCallbacks
    def _from_pi(self, current: _Current, pi: Mapping[str, Any]) -> Any:
        """The outcome of a PaymentIntent that got past the reader: captured, to capture, or cancelled."""
        assert self.api is not None and current.pi_id is not None
        status = pi.get("status")
        if status == "succeeded":
            return _outcome(states.APPROVED, "approved", "The payment was approved.", **_charge_details(pi))
        if status == "canceled":
            return _outcome(states.CANCELLED, "cancelled", payment_intent=current.pi_id)
        try:
            captured = yield self.api.capture(current.pi_id, self._key(current, "capture"))
        except StripeCallError as error:
            self._log.warn("Capture of {payment_id} ({pi}) failed: {code}", payment_id=current.payment_id,
                           pi=current.pi_id, code=error.code, terminal=self.name)
            again = yield self._read(self._get_pi(current.pi_id))
            if again is None:
                return _outcome(states.UNKNOWN, "capture_unconfirmed",
                                f"The card was accepted but the bridge could not confirm the payment with "
                                f"Stripe. {_ASK_STRIPE}", payment_intent=current.pi_id)
            if again.get("status") in ("succeeded", "canceled"):
                outcome = yield self._from_pi(current, again)
                return outcome
            # Never "approved" without a capture: release the authorisation instead.
            outcome = yield self._end(current, _outcome(states.FAILED, "capture_failed",
                                                        payment_intent=current.pi_id), must_void=True)
            return outcome
        if captured.get("status") == "succeeded":
            return _outcome(states.APPROVED, "approved", "The payment was approved.", **_charge_details(captured))
        # A 200 is not a capture: only "succeeded" is.  Anything else may still become a charge (processing)
        # or not: say so, and let the next start ask Stripe again.
        self._log.warn("Capture of {payment_id} ({pi}) answered {status}, not succeeded",
                       payment_id=current.payment_id, pi=current.pi_id, status=captured.get("status"),
                       terminal=self.name)
        if captured.get("status") == "canceled":
            return _outcome(states.CANCELLED, "cancelled", payment_intent=current.pi_id)
        return _outcome(states.UNKNOWN, "capture_unconfirmed",
                        f"{_WORDS['capture_unconfirmed']} {_ASK_STRIPE}", payment_intent=current.pi_id,
                        stripe_status=captured.get("status"))

    @inlineCallbacks
    def _end(self, current: _Current, outcome: Outcome, must_void: bool = False) -> Any:
        """End a payment that will not be charged: void its PaymentIntent so that nothing can charge it later.

        If the PaymentIntent got further meanwhile (the payment won the race), report that instead.  With
        ``must_void``, the reader may still hold the payment, so only a void makes ``outcome`` certain: when
        Stripe cannot be reached to void, the payment is ``unknown``.
        """
        assert self.api is not None
        if current.pi_id is None:
            return outcome
        try:
            yield self.api.cancel_payment_intent(current.pi_id, self._key(current, "void"))
        except StripeCallError as error:
            if error.code != "intent_invalid_state":
                self._log.warn("Could not void PaymentIntent {pi} of {payment_id}: {code}", pi=current.pi_id,
                               payment_id=current.payment_id, code=error.code, terminal=self.name)
                if must_void:
                    return _outcome(states.UNKNOWN, error.code, f"{error.message} {_ASK_STRIPE}",
                                    payment_intent=current.pi_id)
                return outcome
            pi = yield self._read(self._get_pi(current.pi_id))
            status = (pi or {}).get("status")
            if pi is None or (status == "requires_capture" and outcome.code == "capture_failed"):
                return _outcome(states.UNKNOWN, "stripe_unreachable" if pi is None else "capture_failed",
                                f"The bridge could neither complete nor release the payment. {_ASK_STRIPE}",
                                payment_intent=current.pi_id)
            if status in ("requires_capture", "succeeded"):
                result = yield self._from_pi(current, pi)
                return result
        details = dict(outcome.details)
        details.setdefault("payment_intent", current.pi_id)
        return Outcome(outcome.state, outcome.code, outcome.message, details)

    def _void(self, current: _Current) -> Deferred:
        """Best-effort void of a PaymentIntent the reader never saw."""
        assert self.api is not None and current.pi_id is not None
        return self._read(self.api.cancel_payment_intent(current.pi_id, self._key(current, "void")))

    # -- cancel ---------------------------------------------------------------------------------

    @inlineCallbacks
    def cancel(self, payment_id: str) -> Any:
        """Ask the reader to stop; returns words for the cashier.  The payment ends with what pay() reports."""
        current = self._current
        if current is None or current.payment_id != payment_id or self.api is None:
            return "This payment is not running on the reader."
        current.cancel_requested = True
        if not current.sent or current.pi_id is None:
            return "The payment will be stopped before it reaches the reader."
        try:
            reader_id = yield self._find_reader()
            yield self.api.cancel_action(reader_id)
        except BridgeError as error:
            if error.code == "reader_busy":
                return ("The card is being authorised right now; it is too late to cancel. The payment ends "
                        "with the bank's answer.")
            return f"The reader could not be told to stop ({error.message}) The payment ends as the reader reports."
        # The payment can win the race: look at the PaymentIntent before saying anything.
        pi = yield self._read(self._get_pi(current.pi_id))
        self._wake(current)
        if pi is not None and pi.get("status") in ("requires_capture", "succeeded"):
            return ("Too late to cancel: the card was already accepted. The payment completes; refund it if "
                    "needed.")
        return "The reader stopped the payment."

    # -- refunds --------------------------------------------------------------------------------

    @inlineCallbacks
    def _refund(self, request: PaymentRequest, before_send: BeforeSend, current: _Current) -> Any:
        original = request.original or {}
        pi_id = (original.get("details") or {}).get("payment_intent")
        if not pi_id:
            return _outcome(states.FAILED, "refund_needs_original")
        if self._config_error:
            return _outcome(states.FAILED, self._config_error)
        assert self.api is not None
        current.pi_id = None  # a refund never voids the original
        key = self._key(current, "refund")
        try:
            yield maybeDeferred(before_send, {"payment_intent": pi_id, "refund_key": key})
        except Exception as error:
            return safety.not_sent(error, self._log, request.payment_id, self.name, device="Stripe")
        current.sent = True
        try:
            refund = yield self.api.create_refund(pi_id, request.amount, request.payment_id, key)
        except StripeCallError as error:
            if error.retryable:  # it may have been made: recovery looks for it
                return _outcome(states.UNKNOWN, error.code, f"{error.message} {_ASK_STRIPE}",
                                payment_intent=pi_id)
            said = f" Stripe says: {error.stripe_message}" if error.stripe_message else ""
            return _outcome(states.FAILED, error.code, f"The refund was refused.{said} Nothing was refunded.",
                            payment_intent=pi_id)
        return self._refund_outcome(refund)

    @staticmethod
    def _refund_outcome(refund: Mapping[str, Any]) -> Outcome:
        details = {"payment_intent": refund.get("payment_intent"), "refund": refund.get("id"),
                   "refund_status": refund.get("status"), "amount_refunded": refund.get("amount")}
        if refund.get("status") in ("succeeded", "pending"):
            return Outcome(states.APPROVED, "approved", "The refund was accepted by Stripe; the card's bank shows "
                                                        "it within a few days.", details)
        return Outcome(states.DECLINED, "refund_failed", "Stripe could not make the refund "
                       f"({refund.get('failure_reason') or refund.get('status')}).", details)

    # -- recovery -------------------------------------------------------------------------------

    @inlineCallbacks
    def recover(self, payment_id: str, details: Mapping[str, Any]) -> Any:
        """What Stripe says of a payment the bridge lost track of (a restart); None when Stripe cannot say.

        An authorised but uncaptured PaymentIntent (``requires_capture``) is captured: the bridge had sent it
        to the reader meaning to capture it, the reader showed the customer "approved", and an uncaptured
        authorisation would only lapse after days while holding the customer's money.
        """
        pi_id = (details or {}).get("payment_intent")
        if not pi_id or self.api is None or self._config_error:
            return None
        current = _Current(payment_id, pi_id, sent=True)
        try:
            if details.get("refund_key"):
                refunds = yield self.api.list_refunds(pi_id)
                listed = refunds.get("data")
                mine = [r for r in (listed if isinstance(listed, list) else [])
                        if _obj(_obj(r).get("metadata")).get("payment_id") == payment_id]
                if not mine:
                    return _outcome(states.FAILED, "refund_not_sent", payment_intent=pi_id)
                return self._refund_outcome(mine[0])
            pi = yield self._get_pi(pi_id)
        except StripeCallError as error:
            self._log.warn("Stripe cannot say what became of {payment_id}: {code}", payment_id=payment_id,
                           code=error.code, terminal=self.name)
            return None
        status = pi.get("status")
        if status in ("succeeded", "requires_capture", "canceled"):
            outcome = yield self._from_pi(current, pi)
        elif status == "requires_payment_method":
            reader_id = details.get("reader") or self._reader_id
            if reader_id:
                reader = yield self._read(self.api.get_reader(reader_id))
                action = _obj(_obj(reader).get("action"))
                if _action_pi(reader) == pi_id and action.get("status") == "in_progress":
                    yield self._read(self.api.cancel_action(reader_id))
            if pi.get("last_payment_error"):
                outcome = yield self._end(current, self._declined(pi, {}))
            else:
                outcome = yield self._end(current, _outcome(states.CANCELLED, "bridge_restarted"), must_void=True)
        else:
            return None  # processing and the like: Stripe cannot say yet
        if outcome.state == states.UNKNOWN:
            return None
        return outcome

    # -- helpers --------------------------------------------------------------------------------

    @staticmethod
    def _key(current: _Current, step: str) -> str:
        return f"tb-{current.payment_id}-{step}"

    def _get_pi(self, pi_id: str) -> "Deferred[dict]":
        assert self.api is not None
        return self.api.get_payment_intent(pi_id)

    def _read(self, d: Deferred) -> Deferred:
        """The call's answer, or None when it failed (logged): for reads whose failure the caller handles."""

        def failed(failure: Failure) -> None:
            failure.trap(BridgeError)
            self._last_error = failure.value.code
            self._log.info("Stripe call for {terminal} failed: {code}", terminal=self.name,
                           code=failure.value.code)
            return None

        return d.addErrback(failed)

    def _pause(self, current: _Current, seconds: float) -> Deferred:
        waiter: Deferred = Deferred()
        call = self._clock.callLater(  # the lambda's value is never used (mypy's func-returns-value does not apply)
            seconds, lambda: waiter.called or waiter.callback(None))  # type: ignore[func-returns-value]
        current.wake = (waiter, call)
        return waiter

    @staticmethod
    def _wake(current: _Current) -> None:
        if current.wake is not None:
            waiter, call = current.wake
            if not waiter.called:
                call.cancel()
                waiter.callback(None)

    def _crashed(self, failure: Failure, request: PaymentRequest, current: _Current) -> Outcome:
        return safety.crashed(failure, self._log, request.payment_id, self.name, current.sent, _ASK_STRIPE,
                              payment_intent=current.pi_id)

    def _done(self, outcome: Outcome, request: PaymentRequest) -> Outcome:
        self._current = None
        self._log.info("Payment {payment_id} on Stripe reader {terminal}: {state} ({code})",
                       payment_id=request.payment_id, terminal=self.name, state=outcome.state, code=outcome.code,
                       amount=request.amount, currency=request.currency.code)
        return outcome


def build_stripe_driver(config: TerminalConfig, reactor: ThreadedClock,
                        environ: Mapping[str, str] = os.environ) -> StripeReaderDriver:
    settings, problems = parse_stripe_options(config.options)
    assert not problems, problems
    log = StripeReaderDriver._log
    key, problem = read_api_key(settings["api_key_file"], settings["api_key_credential"], environ)
    api = None
    if key is None:
        log.error("Stripe reader {terminal} cannot pay: {problem}", terminal=config.name, problem=problem)
    else:
        if key.startswith("sk_live_"):
            log.warn("Stripe reader {terminal} uses a full live secret key (sk_live_...). Use a restricted key "
                     "(rk_live_...) with only Terminal and PaymentIntents rights: see docs/stripe.md.",
                     terminal=config.name)
        api = StripeAPI(reactor, key, api_base=settings["api_base"], api_version=settings["api_version"],
                        timeout=settings["request_timeout"], max_threads=settings["max_threads"], name=config.name)
    driver = StripeReaderDriver(config.name, reactor, api, reader_id=settings["reader_id"],
                                serial_number=settings["serial_number"],
                                poll_interval=settings["poll_interval"],
                                payment_timeout=settings["payment_timeout"],
                                status_interval=settings["status_interval"])
    return driver  # the daemon starts it (before recovery asks Stripe) and stops it (after the payments in flight)
