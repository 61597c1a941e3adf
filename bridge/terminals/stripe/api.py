"""A thin layer over the ``stripe`` library: explicit settings per call, a bounded thread pool, errors as values.

Works with stripe-python 5.0 (Debian bookworm) and current releases (16.x).  Both are driven through their
request layer rather than the resource classes, because on 5.0 the resource classes read the API base and the
HTTP client (so the timeout) from module globals; the request layer takes every setting as an argument, so this
module sets no ``stripe`` global at all, from any thread:

* 5.0: ``stripe.api_requestor.APIRequestor(key, client, api_base, api_version)`` per call;
* 16.x: one ``stripe.StripeClient`` (its own base address, version, timeout, ``max_network_retries=0``) and
  ``raw_request`` with ``api_key``/``idempotency_key`` per call.

The library blocks (``requests``), so every call runs on this object's own :class:`ThreadPool` (a few threads,
started and stopped with the driver), never on the reactor thread.  Retries are ours, scheduled on the reactor
clock: rate limits, 409 conflicts, 5xx and connection errors are retried with the *same* idempotency key and a
growing pause.  Every POST carries an idempotency key (the caller's, or one made here and kept across retries).
"""

from __future__ import annotations

import importlib
import uuid
from typing import Any, Mapping, Optional, cast
from urllib.parse import quote

import stripe
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from bridge.core.backoff import backoff
from bridge.core.reactor_types import Clock, ThreadedClock
from bridge.errors import BridgeError
from bridge.terminals.stripe.options import API_VERSION, DEFAULT_API_BASE

MAX_BACKOFF = 5.0

#: Stripe's minimum charge per currency, minor units (docs.stripe.com/currencies; the same applies in person).
MINIMUM_CHARGE = {
    "USD": 50, "EUR": 50, "CAD": 50, "AUD": 50, "CHF": 50, "NZD": 50, "SGD": 50, "GBP": 30, "DKK": 250,
    "NOK": 300, "SEK": 300, "HKD": 400, "JPY": 50, "MXN": 1000,
}

_CONFIG = " This is a configuration error: ask the person who installed the bridge."
_CONFIG_ADMIN = " This is a setting in the Stripe Dashboard: ask the person who installed the bridge."
MESSAGES = {
    "reader_offline": "The card reader is offline. Check that it is switched on and connected to the internet, "
                      "then try again.",
    "reader_busy": "The card reader is busy (another payment, an update, or a card still inserted). Wait a "
                   "moment and try again.",
    "reader_timeout": "The card reader did not answer Stripe in time. Check its network connection and try "
                      "again.",
    "reader_hardware_fault": "The card reader reports a hardware fault. Restart it; if the fault stays, use "
                             "another reader and ask Stripe support to replace this one.",
    "reader_location_invalid": "The card reader's location in Stripe does not allow this payment (its country "
                               "does not match the Stripe account or the currency)." + _CONFIG_ADMIN,
    "reader_location_not_allowed": "The card reader cannot be registered at this location (the location's "
                                   "country does not match the Stripe account)." + _CONFIG_ADMIN,
    "location_country_unsupported": "Stripe Terminal is not available in the country of this location."
                                    + _CONFIG_ADMIN,
    "intent_invalid_state": "Stripe says the payment is no longer in a state that allows this.",
    "stripe_rate_limited": "Stripe is receiving too many requests right now. Try again in a moment.",
    "stripe_conflict": "Stripe is still handling an earlier request for this payment. Try again in a moment.",
    "stripe_unavailable": "Stripe is not answering properly right now. Try again in a moment.",
    "stripe_unreachable": "The bridge cannot reach Stripe. Check the shop's internet connection.",
    "stripe_auth_failed": "Stripe refused the bridge's API key." + _CONFIG,
    "stripe_permission_denied": "The bridge's Stripe key is not allowed to do this (a restricted key needs "
                                "Terminal and PaymentIntents write access)." + _CONFIG,
    "stripe_not_found": "Stripe does not know the reader or payment the bridge asked for." + _CONFIG,
    "amount_too_small": "The amount is below the smallest card payment Stripe accepts in this currency.",
    "amount_too_large": "The amount is above the largest card payment Stripe accepts.",
    "stripe_idempotency_error": "The bridge sent Stripe two different requests under one key. Nothing was "
                                "changed; this is a bug in the bridge, please report it.",
    "stripe_error": "Stripe refused the request.",
    "stripe_bad_answer": "Stripe's answer could not be read (it is not shaped as Stripe's API documents).",
    "bridge_stopping": "The bridge is stopping; try again once it is back.",
}

#: Stripe's Terminal error codes (docs.stripe.com/error-codes; the ``last_payment_error.code`` values of
#: stripe-python 16) and the bridge's code for each: every one has a sentence in MESSAGES.
TERMINAL_CODES = {
    "terminal_location_country_unsupported": "location_country_unsupported",
    "terminal_reader_busy": "reader_busy",
    "terminal_reader_hardware_fault": "reader_hardware_fault",
    "terminal_reader_invalid_location_for_activation": "reader_location_not_allowed",
    "terminal_reader_invalid_location_for_payment": "reader_location_invalid",
    "terminal_reader_offline": "reader_offline",
    "terminal_reader_timeout": "reader_timeout",
}

#: Stripe error codes (``error.code``) and the bridge's code for each.
_STRIPE_CODES = {
    **TERMINAL_CODES,
    "intent_invalid_state": "intent_invalid_state",
    "payment_intent_unexpected_state": "intent_invalid_state",
    "amount_too_small": "amount_too_small",
    "amount_too_large": "amount_too_large",
    "resource_missing": "stripe_not_found",
    "rate_limit": "stripe_rate_limited",
    "idempotency_key_in_use": "stripe_conflict",
    "lock_timeout": "stripe_conflict",
}
_RETRYABLE = frozenset({"stripe_rate_limited", "stripe_conflict", "stripe_unavailable", "stripe_unreachable"})

# stripe 16.x exports the error classes at the top level; 5.0 only in ``stripe.error``.
_E: Any = stripe if hasattr(stripe, "StripeError") else stripe.error
IS_CLIENT_API = hasattr(stripe, "StripeClient")


class StripeCallError(BridgeError):
    """A Stripe call that failed, as a bridge error (``code``, cashier ``message``) with Stripe's own words."""

    def __init__(self, code: str, stripe_code: Optional[str] = None, stripe_message: Optional[str] = None,
                 http_status: Optional[int] = None, retryable: bool = False) -> None:
        super().__init__(code, MESSAGES.get(code, MESSAGES["stripe_error"]))
        self.stripe_code = stripe_code
        self.stripe_message = stripe_message
        self.http_status = http_status
        self.retryable = retryable


def map_error(error: Exception) -> StripeCallError:
    """The bridge's view of an exception raised by the stripe library (either version)."""
    body = getattr(error, "json_body", None)
    detail = body.get("error") if isinstance(body, dict) else None
    detail = detail if isinstance(detail, dict) else {}
    status = getattr(error, "http_status", None)
    stripe_code = detail.get("code") or getattr(error, "code", None)
    stripe_message = detail.get("message") or getattr(error, "user_message", None) or str(error)
    if isinstance(error, _E.APIConnectionError):
        code = "stripe_unreachable"
    elif isinstance(error, _E.AuthenticationError) or status == 401:
        code = "stripe_auth_failed"
    elif isinstance(error, _E.PermissionError) or status == 403:
        code = "stripe_permission_denied"
    elif isinstance(error, _E.RateLimitError) or status == 429:
        code = "stripe_rate_limited"
    elif isinstance(error, _E.IdempotencyError) or detail.get("type") == "idempotency_error":
        code = "stripe_idempotency_error"
    elif stripe_code in _STRIPE_CODES:
        code = _STRIPE_CODES[stripe_code]
    elif status == 409:
        code = "stripe_conflict"
    elif isinstance(status, int) and status >= 500:
        code = "stripe_unavailable"
    elif status == 404:
        code = "stripe_not_found"
    else:
        code = "stripe_error"
    retryable = code in _RETRYABLE
    headers = getattr(error, "headers", None) or {}
    advice = headers.get("Stripe-Should-Retry") if hasattr(headers, "get") else None
    if advice in ("true", "false") and code != "stripe_unreachable":
        retryable = advice == "true"
    return StripeCallError(code, stripe_code, stripe_message, status, retryable)


def path(template: str, *ids: str) -> str:
    """``path("/v1/terminal/readers/{}/cancel_action", reader_id)`` with the ids made safe for a URL."""
    return template.format(*(quote(i, safe="") for i in ids))


class _Requestor:
    """Sends one request with the library, blocking; returns the decoded JSON body as plain dicts."""

    def __init__(self, api_key: str, api_base: str, api_version: str, timeout: float) -> None:
        self._key = api_key
        self._base = api_base.rstrip("/")
        self._version = api_version
        if IS_CLIENT_API:
            self._client = stripe.StripeClient(
                api_key, stripe_version=api_version, base_addresses={"api": self._base},
                max_network_retries=0, http_client=stripe.RequestsClient(timeout=timeout))
        else:
            # stripe 5.0's modules, which the current library (and so mypy in the venv) no longer has
            http_client: Any = importlib.import_module("stripe.http_client")
            self._http = http_client.RequestsClient(timeout=timeout)

    def perform(self, method: str, url: str, params: Mapping[str, Any],
                idempotency_key: Optional[str]) -> dict[str, Any]:
        try:
            if IS_CLIENT_API:
                options: dict[str, Any] = {"api_key": self._key, "stripe_version": self._version}
                if idempotency_key is not None:
                    options["idempotency_key"] = idempotency_key
                return self._client.raw_request(method, url, **dict(params), **options).data
            api_requestor: Any = importlib.import_module("stripe.api_requestor")
            requestor = api_requestor.APIRequestor(key=self._key, client=self._http, api_base=self._base,
                                                   api_version=self._version)
            headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else None
            response, _ = requestor.request(method, url, dict(params) or None, headers)
            return response.data
        except _E.StripeError as error:
            raise map_error(error) from None


class StripeAPI:
    """Stripe's REST API for one account, called off the reactor thread."""

    log = Logger()

    def __init__(self, reactor: Optional[ThreadedClock], api_key: str, *, api_base: str = DEFAULT_API_BASE,
                 api_version: str = API_VERSION, timeout: float = 30.0, max_threads: int = 3,
                 retries: int = 3, backoff: float = 0.5, clock: Optional[Clock] = None, name: str = "stripe") -> None:
        self._reactor = reactor
        self._clock = clock if clock is not None else reactor  # None: call_sync only (the command line)
        self._requestor = _Requestor(api_key, api_base, api_version, timeout)
        self._retries = retries
        self._backoff = backoff
        self._pool = ThreadPool(minthreads=0, maxthreads=max_threads, name=f"stripe-{name}")
        self._stopping = False
        self._busy = 0  # calls on the pool now
        self._stop_waiters: list[Deferred] = []

    # -- life cycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self._stopping = False
        if not self._pool.started:
            self._pool.start()

    def stop(self) -> "Deferred[None]":
        """Refuse new calls, let the calls under way finish (each is bounded by the HTTP timeout), then stop
        the threads.  The reactor keeps running meanwhile: joining a busy thread from the reactor thread would
        block it until that call's timeout."""
        self._stopping = True
        waiter: Deferred = Deferred()
        self._stop_waiters.append(waiter)
        self._maybe_stopped()
        return waiter

    def _maybe_stopped(self) -> None:
        if not self._stopping or self._busy:
            return
        if self._pool.started:
            self._pool.stop()  # every thread is idle: joins at once
        waiters, self._stop_waiters = self._stop_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    @property
    def running(self) -> bool:
        return bool(self._pool.started)

    # -- calls ----------------------------------------------------------------------------------

    def call_blocking(self, method: str, url: str, params: Optional[Mapping[str, Any]] = None,
                      idempotency_key: Optional[str] = None) -> dict[str, Any]:
        """One call on the calling thread, without retries: for the command line, where no reactor runs."""
        method = method.lower()
        if method == "post" and idempotency_key is None:
            idempotency_key = "tb-" + uuid.uuid4().hex
        return self._requestor.perform(method, url, params or {}, idempotency_key)

    @inlineCallbacks
    def call(self, method: str, url: str, params: Optional[Mapping[str, Any]] = None,
             idempotency_key: Optional[str] = None) -> Any:
        """``Deferred[dict]``: the call's JSON answer, or a :class:`StripeCallError` once retries are spent."""
        if self._stopping:
            raise StripeCallError("bridge_stopping")
        if not self._pool.started:
            self.start()  # an API nobody started (a tool, a test): whoever made it stops it
        method = method.lower()
        if method == "post" and idempotency_key is None:
            idempotency_key = "tb-" + uuid.uuid4().hex  # made here so that our retries reuse it
        attempt = 0
        while True:
            self._busy += 1
            try:
                result = yield deferToThreadPool(cast(IReactorFromThreads, self._reactor), self._pool,
                                                 self._requestor.perform, method, url, params or {}, idempotency_key)
                if not isinstance(result, dict):
                    # Not an object: the request may have been carried out all the same, so it counts as one
                    # whose outcome is unsure (asked again with the same key, then "may have happened").
                    self.log.warn("Stripe {method} {url} answered {kind}, not an object", method=method.upper(),
                                  url=url, kind=type(result).__name__)
                    raise StripeCallError("stripe_bad_answer", retryable=True)
                return result
            except StripeCallError as error:
                if not error.retryable or attempt >= self._retries or self._stopping:
                    raise
                delay = backoff(self._backoff, MAX_BACKOFF)(attempt)
                self.log.info("Stripe {method} {url} failed ({code}); retry {attempt} in {delay}s with the "
                              "same idempotency key", method=method.upper(), url=url, code=error.code,
                              attempt=attempt + 1, delay=delay)
                attempt += 1
            finally:
                self._busy -= 1
                self._maybe_stopped()
            yield deferLater(cast(IReactorTime, self._clock), delay, lambda: None)
            if self._stopping:
                raise StripeCallError("bridge_stopping")

    # -- the calls the bridge makes -------------------------------------------------------------

    def get_reader(self, reader_id: str) -> "Deferred[dict]":
        return self.call("get", path("/v1/terminal/readers/{}", reader_id))

    def find_reader_by_serial(self, serial: str) -> "Deferred[dict]":
        return self.call("get", "/v1/terminal/readers", {"serial_number": serial, "limit": 1})

    def create_payment_intent(self, amount: int, currency: str, payment_id: str, key: str,
                              description: Optional[str] = None) -> "Deferred[dict]":
        params: dict[str, Any] = {"amount": amount, "currency": currency.lower(),
                                  "payment_method_types": ["card_present"], "capture_method": "manual",
                                  "metadata": {"payment_id": payment_id}}
        if description:
            params["description"] = description
        return self.call("post", "/v1/payment_intents", params, key)

    def get_payment_intent(self, pi_id: str) -> "Deferred[dict]":
        """The PaymentIntent with its latest charge expanded (the card's brand, last four digits, auth code)."""
        return self.call("get", path("/v1/payment_intents/{}", pi_id), {"expand": ["latest_charge"]})

    def capture(self, pi_id: str, key: str) -> "Deferred[dict]":
        return self.call("post", path("/v1/payment_intents/{}/capture", pi_id), {"expand": ["latest_charge"]},
                         key)

    def cancel_payment_intent(self, pi_id: str, key: str) -> "Deferred[dict]":
        return self.call("post", path("/v1/payment_intents/{}/cancel", pi_id),
                         {"cancellation_reason": "abandoned"}, key)

    def process_payment_intent(self, reader_id: str, pi_id: str, key: str) -> "Deferred[dict]":
        return self.call("post", path("/v1/terminal/readers/{}/process_payment_intent", reader_id),
                         {"payment_intent": pi_id, "process_config": {"enable_customer_cancellation": True}}, key)

    def cancel_action(self, reader_id: str) -> "Deferred[dict]":
        return self.call("post", path("/v1/terminal/readers/{}/cancel_action", reader_id))

    def create_refund(self, pi_id: str, amount: int, payment_id: str, key: str) -> "Deferred[dict]":
        return self.call("post", "/v1/refunds", {"payment_intent": pi_id, "amount": amount,
                                                 "metadata": {"payment_id": payment_id}}, key)

    def list_refunds(self, pi_id: str) -> "Deferred[dict]":
        return self.call("get", "/v1/refunds", {"payment_intent": pi_id, "limit": 100})
