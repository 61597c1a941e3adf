"""Results as Ogone-style feedback: form-encoded parameters signed like Ogone's SHA-OUT, online then deferred.

Signing (pure, :func:`sha_sign`), as Ogone and Odoo's ``payment_ogone`` compute SHA-OUT: upper-case every name,
sort by name, drop empty values (``'0'`` stays), keep only allow-listed names, concatenate ``NAME=value`` followed
by the passphrase for every pair, hash the UTF-8 bytes, hex digest in upper case.

Delivery (:class:`FeedbackPoster`): every final state of the uplink's client's payments, in journal order, is
POSTed at once ("online"); until the receiver answers HTTP 200 it is retried with backoff ("deferred"), from the
journal's event outbox, across restarts.  The uplink's delivery cursor is an acks row (``uplink:NAME``), so what
was delivered is on disk and nothing is posted twice except when a 200 was lost on the way (the receiver must be
idempotent on PAYID and TBSEQ, as Ogone's receivers are on a repeated feedback).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import random
from datetime import datetime
from typing import Any, Callable, Mapping, Optional
from urllib.parse import urlencode

from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.logger import Logger
from twisted.python.failure import Failure

from bridge.core import states
from bridge.core.journal import Event, Journal
from bridge.core.money import CURRENCIES, format_major
from bridge.core.backoff import backoff
from bridge.core.contract import CHEQUE, REFUND
from bridge.core.deferreds import OnceMore
from bridge.core.reactor_types import Clock, DelayedCall

#: Ogone's SHA-OUT allow-list as Odoo 15.0+ ``payment_ogone`` carries it (63 names).
SHA_OUT_KEYS = frozenset("""
AAVADDRESS AAVCHECK AAVMAIL AAVNAME AAVPHONE AAVZIP ACCEPTANCE ALIAS AMOUNT BIC BIN BRAND CARDNO CCCTY CN
COLLECTOR_BIC COLLECTOR_IBAN COMPLUS CREATION_STATUS CREDITDEBIT CURRENCY CVCCHECK DCC_COMMPERCENTAGE
DCC_CONVAMOUNT DCC_CONVCCY DCC_EXCHRATE DCC_EXCHRATESOURCE DCC_EXCHRATETS DCC_INDICATOR DCC_MARGINPERCENTAGE
DCC_VALIDHOURS DEVICEID DIGESTCARDNO ECI ED EMAIL ENCCARDNO FXAMOUNT FXCURRENCY IP IPCTY MANDATEID MOBILEMODE
NBREMAILUSAGE NBRIPUSAGE NBRIPUSAGE_ALLTX NBRUSAGE NCERROR ORDERID PAYID PAYIDSUB PAYMENT_REFERENCE PM
SCO_CATEGORY SCORING SEQUENCETYPE SIGNDATE STATUS SUBBRAND SUBSCRIPTION_ID TICKET TRXDATE VC
""".split())

#: The bridge's own parameters.  They are signed too: the bridge's list is Ogone's plus these.
BRIDGE_KEYS = frozenset({"TBCLIENT", "TBBRIDGE", "TBSEQ", "TBSTATE", "TBREASON", "TBMESSAGE", "TBTERMINAL", "TBKIND",
                         "TBREFUNDOF"})
FEEDBACK_KEYS = SHA_OUT_KEYS | BRIDGE_KEYS

HASHES = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha512": hashlib.sha512}

#: Payment state -> Ogone STATUS.  An approved refund is 8; every other refund state maps like a payment's.
STATUS = {states.APPROVED: "9", states.DECLINED: "2", states.CANCELLED: "1", states.FAILED: "0",
          states.UNKNOWN: "92"}
REFUND_APPROVED = "8"

#: Retry delays of deferred feedback: from RETRY_INITIAL seconds, doubled, up to RETRY_MAX (plus jitter).
RETRY_INITIAL = 2.0
RETRY_MAX = 300.0
#: The longest a result waits for the unanswered acknowledgement of its payment: Odoo's retry of a request that
#: collided with another costs at most 2 s, so waiting longer (an ack that hangs) would cost more than it saves.
ACK_WAIT_MAX = 3.0


def sha_out_string(params: Mapping[str, Any], passphrase: str, allowed: frozenset = SHA_OUT_KEYS) -> str:
    """The text SHA-OUT hashes (shown in docs and tests; never logged: it holds the passphrase)."""
    pairs = sorted((str(k).upper(), v) for k, v in params.items())
    return "".join(f"{key}={value}{passphrase}" for key, value in pairs
                   if key in allowed and value not in (None, False, ""))


def sha_sign(params: Mapping[str, Any], passphrase: str, hash_name: str = "sha512",
             allowed: frozenset = SHA_OUT_KEYS) -> str:
    """SHASIGN of ``params``: upper-case hex digest of :func:`sha_out_string`."""
    text = sha_out_string(params, passphrase, allowed)
    return HASHES[hash_name](text.encode("utf-8")).hexdigest().upper()


def sha_verify(params: Mapping[str, Any], passphrase: str, hash_name: str = "sha512",
               allowed: frozenset = SHA_OUT_KEYS) -> bool:
    received = next((v for k, v in params.items() if str(k).upper() == "SHASIGN"), None)
    if not isinstance(received, str):
        return False
    unsigned = {k: v for k, v in params.items() if str(k).upper() != "SHASIGN"}
    return hmac.compare_digest(received.upper(), sha_sign(unsigned, passphrase, hash_name, allowed))


def ogone_status(kind: str, state: str) -> Optional[str]:
    """Ogone's STATUS for a final state, None for a state that is not final."""
    if state == states.APPROVED and kind == REFUND:
        return REFUND_APPROVED
    return STATUS.get(state)


def ogone_amount(amount: int, currency_code: str) -> str:
    """Major units as Ogone writes them: ``1111.11``, ``247`` (trailing zeros dropped)."""
    cur = CURRENCIES.get(currency_code)
    text = format_major(amount, cur) if cur else str(amount)
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def trx_date(iso_time: str) -> str:
    """``MM/DD/YY`` (UTC) from the payment view's ISO time."""
    moment = datetime.fromisoformat(iso_time.replace("Z", "+00:00"))
    return moment.strftime("%m/%d/%y")


def feedback_params(payment: Mapping[str, Any], seq: int, bridge_name: str, client_id: str) -> dict[str, str]:
    """The feedback parameters of one payment view (bridge.core.payments.payment_view), SHASIGN excluded.
    ``client_id`` (TBCLIENT) is the uplink's client: the receiver picks the passphrase to check SHASIGN by it."""
    details = payment.get("details") or {}
    status = ogone_status(payment["kind"], payment["state"]) or ""
    reason = payment.get("reason") or {}
    card = details.get("card_masked") or ""
    params = {
        "ORDERID": payment["command_id"],
        "PAYID": payment["id"],
        "AMOUNT": ogone_amount(payment["amount"], payment["currency"]),
        "CURRENCY": payment["currency"],
        "STATUS": status,
        "NCERROR": "0" if status in ("9", REFUND_APPROVED) else "1",
        "CARDNO": card.replace("#", "X").replace("*", "X"),
        "PM": "Cheque" if payment.get("method") == CHEQUE else "CreditCard",
        "BRAND": details.get("brand") or details.get("application") or "",
        "ACCEPTANCE": details.get("authorisation") or "",
        "TRXDATE": trx_date(payment["updated"]),
        "TBCLIENT": client_id,
        "TBBRIDGE": bridge_name,
        "TBSEQ": str(seq),
        "TBSTATE": payment["state"],
        "TBREASON": reason.get("code") or "",
        "TBMESSAGE": reason.get("message") or "",
        "TBTERMINAL": payment["terminal"],
        "TBKIND": payment["kind"],
        "TBREFUNDOF": details.get("refund_of") or "",
    }
    return {k: str(v) for k, v in params.items() if v not in (None, "")}


def signed_form(params: Mapping[str, str], passphrase: str, hash_name: str) -> bytes:
    """The form-encoded body: the parameters in sorted order, then SHASIGN."""
    fields = sorted(params.items())
    fields.append(("SHASIGN", sha_sign(params, passphrase, hash_name, FEEDBACK_KEYS)))
    return urlencode(fields).encode("ascii")


#: post(url, body) -> Deferred firing with the HTTP status code (fails when no answer came).
Post = Callable[[str, bytes], Deferred]


# What the poster uses of the clock, as typing Protocols: Twisted's IReactorTime and IDelayedCall are zope
# interfaces, which mypy cannot call through without the mypy-zope plugin (pyproject.toml's mypy section).
DELIVERED, REFUSED, UNREACHABLE = "delivered", "refused", "unreachable"


def read_refused(path: Optional[str]) -> set[int]:
    """The seqs of results the receiver refused, waiting for their own retry (see :class:`RefusedStore`)."""
    if not path:
        return set()
    try:
        with open(path, encoding="utf-8") as f:
            seqs = json.load(f).get("refused", [])
    except (OSError, ValueError, AttributeError):
        return set()
    return {s for s in seqs if isinstance(s, int) and not isinstance(s, bool) and s > 0}


class RefusedStore:
    """A small file (STATE_DIR/uplink/NAME.refused.json) of the results the receiver refused.  The delivery
    cursor goes past a refused result only once its seq is on disk here, so that no restart can skip it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def load(self) -> set[int]:
        return read_refused(self.path)

    def save(self, seqs: set[int]) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), mode=0o750, exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"refused": sorted(seqs)}, f)
            f.flush()
            os.fsync(f.fileno())  # before the cursor passes them: rare, small, and the one thing not to lose
        os.replace(tmp, self.path)


class FeedbackPoster:
    """Delivers the final states of one client's payments to one URL, in journal order, until HTTP 200.

    A result the receiver refuses (it answered, but not 200) does not hold back the later ones: it waits for its
    own retry, with its own backoff, while the cursor goes on (its seq is kept in a :class:`RefusedStore`).  When
    no answer comes at all, the round stops and everything waits for one shared backoff: the receiver is down,
    and the later results would meet the same.  :meth:`wake` (a healthy bus or fetch: Odoo is back) cuts every
    wait short."""

    log = Logger()

    def __init__(self, *, name: str, journal: Journal, client_id: str, cursor_id: str, url: str, passphrase: str,
                 hash_name: str, bridge_name: str, post: Post, clock: Clock, refused_path: str,
                 on_result: Callable[[Optional[str]], None] = lambda error: None,
                 retry_initial: Optional[float] = None, retry_max: Optional[float] = None,
                 rand: Callable[[], float] = random.random,
                 ack_of: Callable[[str], Optional[Deferred]] = lambda payment_id: None) -> None:
        """``refused_path``: the file of refused results (STATE_DIR/uplink/NAME.refused.json).  ``ack_of(payment
        id)``: a Deferred of the acknowledgement of that payment's command still on its way to Odoo, or None (the
        command fetcher's ``ack_in_flight``); a result waits for it before it is posted."""
        self.name = name
        self._journal = journal
        self._client_id = client_id
        self._cursor_id = cursor_id
        self._url = url
        self._passphrase = passphrase
        self._hash = hash_name
        self._bridge_name = bridge_name
        self._post = post
        self._clock = clock
        self._on_result = on_result
        self._retry_initial = RETRY_INITIAL if retry_initial is None else retry_initial
        self._retry_max = RETRY_MAX if retry_max is None else retry_max
        self._rand = rand
        self._ack_of = ack_of
        #: the payment id whose acknowledgement a result waits for before it is posted, or None
        self.waiting_for_ack: Optional[str] = None
        self._store = RefusedStore(refused_path)
        self._cursor = 0
        self._failures = 0  # rounds in a row that got no answer
        self._down_until: Optional[float] = None  # no answer: nothing is posted before this time
        self._refused: dict[int, tuple[int, float]] = {}  # seq -> (refusals, when to try again)
        self._retry: Optional[DelayedCall] = None
        self._runs = OnceMore(self._start_delivery, self._delivered)
        self._stopped = True

    # -- life cycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self._cursor = self._journal.acked(self._cursor_id)
        now = self._clock.seconds()
        self._refused = {seq: (0, now) for seq in self._store.load() if seq <= self._cursor}
        self._stopped = False
        self.kick()

    def stop(self) -> Deferred:
        """Stop posting; fires when a post in flight has ended (it is cancelled; redone at the next start)."""
        self._stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        return self._runs.stop()

    def on_event(self, event: Event) -> None:
        """A PaymentService listener: a final state of our client's payments goes out at once."""
        if event.client_id == self._client_id and event.body.get("payment", {}).get("final"):
            self.kick()

    @property
    def refused(self) -> list[int]:
        """The seqs of refused results waiting for their retry."""
        return sorted(self._refused)

    # -- delivery -------------------------------------------------------------------------------

    def wake(self) -> None:
        """The receiver is healthy again (the bus connected, a fetch worked): whatever waits goes now."""
        if self._stopped or (not self._refused and self._down_until is None):
            return
        now = self._clock.seconds()
        self._refused = {seq: (count, now) for seq, (count, _) in self._refused.items()}
        self._down_until = None
        self.kick()

    def kick(self) -> None:
        """Deliver what is due now: new results at once (online first), refused ones when their time came."""
        if self._stopped:
            return
        self._runs.ask()

    def _start_delivery(self) -> Deferred:
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        self._down_until = None  # a new result is tried at once even while the receiver seemed down
        return self._deliver()

    def _delivered(self, result: Any, again: bool) -> None:
        if isinstance(result, Failure) and not result.check(CancelledError):
            # e.g. the refused file cannot be written: the cursor stayed, so nothing is skipped; retried later.
            self.log.failure("Feedback delivery of uplink {uplink} stopped; it is tried again", result,
                             uplink=self.name)
            self._unreachable()  # tried again after the shared backoff
        if again and not self._stopped:
            self.kick()
            return
        self._schedule()

    def _pending(self, limit: int) -> list[Event]:
        return self._journal.events_after(self._client_id, self._cursor, limit=limit)

    @inlineCallbacks
    def _deliver(self):
        # 1. Refused results whose retry is due, oldest first.
        now = self._clock.seconds()
        for seq in sorted(s for s, (_, due) in self._refused.items() if due <= now):
            if self._stopped:
                return
            events = self._journal.events_after(self._client_id, seq - 1, limit=1)
            if not events or events[0].seq != seq:
                self.log.warn("Feedback {seq} was refused and its payment is no longer in the journal (pruned); "
                              "it is given up", seq=seq, uplink=self.name)
                del self._refused[seq]
                self._store.save(set(self._refused))
                continue
            outcome = yield self._post_one(events[0])
            if outcome == DELIVERED:
                del self._refused[seq]
                self._store.save(set(self._refused))
            elif outcome == REFUSED:
                count = self._refused[seq][0] + 1
                self._refused[seq] = (count, self._clock.seconds() + self._delay(count))
            else:
                return self._unreachable()
        # 2. New results, in journal order.  The cursor is written once per result and at the end of a batch, not
        # after every event: most events (accepted, in_progress) are only stepped over, and each write is an fsync.
        written = self._cursor
        going = True
        while going and not self._stopped:
            events = self._pending(100)
            going = bool(events)
            for event in events:
                if self._stopped:
                    break
                if _is_final(event):
                    outcome = yield self._post_one(event)
                    if outcome == UNREACHABLE:
                        self._unreachable()
                        going = False
                        break
                    if outcome == REFUSED:
                        self._refused[event.seq] = (1, self._clock.seconds() + self._delay(1))
                        self._store.save(set(self._refused))  # on disk before the cursor goes past it
                    self._cursor = event.seq
                    yield self._journal.ack(self._cursor_id, event.seq)
                    written = event.seq
                else:
                    self._cursor = event.seq
        if self._cursor > written and not self._journal.closed:
            yield self._journal.ack(self._cursor_id, self._cursor)

    def _unreachable(self) -> None:
        self._failures += 1
        self._down_until = self._clock.seconds() + self._delay(self._failures)

    @inlineCallbacks
    def _post_one(self, event: Event):
        payment = event.body["payment"]
        ack = self._ack_of(payment["id"])
        if ack is not None:
            # Odoo would write the payment's row for both at once, and retry the loser after up to 2 s.
            self.waiting_for_ack = payment["id"]
            try:
                yield _at_most(ack, ACK_WAIT_MAX, self._clock)
            finally:
                self.waiting_for_ack = None
        params = feedback_params(payment, event.seq, self._bridge_name, self._client_id)
        body = signed_form(params, self._passphrase, self._hash)
        outcome = UNREACHABLE
        try:
            code = yield self._post(self._url, body)
        except CancelledError:
            raise
        except Exception as e:  # the failure's words go to the status; the daemon stays up
            error = f"feedback to {self._url} failed: {getattr(e, 'message', None) or e}"
        else:
            if code == 200:
                self._failures = 0
                self.log.info("Feedback for payment {payment_id} delivered ({state})", payment_id=payment["id"],
                              state=payment["state"], uplink=self.name, seq=event.seq)
                if not self._refused or set(self._refused) == {event.seq}:
                    self._on_result(None)
                return DELIVERED
            outcome = REFUSED
            error = f"feedback to {self._url} was answered with HTTP {code}, not 200"
            if code in (502, 503, 504):
                error += f" (Odoo is not reachable behind its proxy ({code}): it may be restarting)"
        self.log.warn("Feedback for payment {payment_id} not delivered, will retry: {error}",
                      payment_id=payment["id"], error=error, uplink=self.name, seq=event.seq)
        self._on_result(error)
        return outcome

    def _delay(self, failures: int) -> float:
        return backoff(self._retry_initial, self._retry_max, spread=0.2, rand=self._rand)(failures - 1)

    def _schedule(self) -> None:
        """One timer, for the earliest of: the end of the no-answer backoff, a refused result's retry."""
        if self._stopped:
            return
        times = [due for _, due in self._refused.values()]
        if self._down_until is not None:
            # No answer came: nothing goes before the shared backoff ends, a refused result due long ago included.
            times = [max(due, self._down_until) for due in times] + [self._down_until]
        if not times:
            return
        delay = max(0.0, min(times) - self._clock.seconds())
        self._retry = self._clock.callLater(delay, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        self.kick()


def _at_most(d: Deferred, seconds: float, clock: Clock) -> Deferred:
    """Fires (with None) when ``d`` fires or after ``seconds``, whichever comes first; ``d``'s own chain is left
    as it was.  Cancelling it cancels only the timer."""
    timer: Optional[DelayedCall] = None

    def cancel(_: Deferred) -> None:
        if timer is not None and timer.active():
            timer.cancel()

    done: Deferred = Deferred(cancel)

    def fire(result: Any = None) -> Any:
        if timer is not None and timer.active():
            timer.cancel()
        if not done.called:
            done.callback(None)
        return result

    timer = clock.callLater(seconds, fire)
    d.addBoth(fire)
    return done


def waiting(journal: Journal, client_id: str, cursor_id: str, refused_path: Optional[str] = None) -> int:
    """How many final states of ``client_id``'s payments wait for delivery: after ``cursor_id``'s cursor, and
    those refused (kept in ``refused_path``) waiting for their retry."""
    cursor = journal.acked(cursor_id)
    after = sum(1 for e in journal.events_after(client_id, cursor, limit=10**6) if _is_final(e))
    # A refused seq is on disk a moment before the cursor passes it: count it once.
    return after + sum(1 for seq in read_refused(refused_path) if seq <= cursor)


def _is_final(event: Event) -> bool:
    payment = event.body.get("payment") or {}
    return bool(payment.get("final")) and payment.get("state") in STATUS
