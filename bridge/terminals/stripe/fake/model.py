"""The fake's model of a Stripe account: locations, readers, PaymentIntents, charges, refunds, and the API's routes
over them, with Stripe's authentication, idempotency and injected failures (:meth:`FakeStripe.handle`)."""

from __future__ import annotations

import json
import secrets
import uuid
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.resource import Resource

from bridge.core.reactor_types import Clock, DelayedCall, Listener
from bridge.terminals.stripe.fake.http import FakeResource, FakeServer
from bridge.terminals.stripe.fake.knobs import FailureKnob, ReaderKnobs, handle_knob
from bridge.terminals.stripe.fake.edge import Recorded, Stored, handle
from bridge.terminals.stripe.fake.reference import (API_ERROR_VERSION, DECLINE_MESSAGES, DOC, GUIDE,
                                                    LATEST_CHARGE_VERSION, MINIMUMS, SIMULATED_CODES,
                                                    TERMINAL_MESSAGES, TEST_AMOUNTS, TEST_CARDS, no_billing_details)
from bridge.terminals.stripe.fake.wire import (ApiError, as_bool, as_int, check_params, missing, no_such,
                                               raise_, rand, timeout_error)


class FakeStripe:
    """The fake's state, its knobs, and its HTTP face (:meth:`resource`, :meth:`listen`)."""

    log = Logger()

    def __init__(self, clock: Clock, keys: Optional[set[str]] = None, livemode_keys: bool = False) -> None:
        self.clock = clock
        self.keys = keys  # None: any sk_test_/rk_test_ key is accepted
        self.livemode_keys = livemode_keys  # accept sk_live_/rk_live_ keys too (as a live account would)
        self.forbidden_keys: set[str] = set()  # 403 on every call with these keys
        self.requests: list[Recorded] = []
        self.locations: dict[str, dict] = {}
        self.readers: dict[str, dict] = {}
        self.knobs: dict[str, ReaderKnobs] = {}
        self.intents: dict[str, dict] = {}
        self.charges: dict[str, dict] = {}
        self.refunds: dict[str, dict] = {}
        self.registration_codes: dict[str, tuple[str, str]] = {}  # code -> (device_type, serial): real readers
        self.slow: float = 0.0  # seconds before every answer
        self.allow_over_capture = False
        self.capture_status = "succeeded"  # the status a capture leaves the PaymentIntent in ("processing"...)
        self.failures: list[FailureKnob] = []  # fail_next / drop_next: answered before the endpoint runs
        self._inside: list[FailureKnob] = []  # 5xx once the endpoint runs: stored under the idempotency key
        self.idempotency: dict[tuple[str, str], Stored] = {}  # (API key, Idempotency-Key) -> the answer
        self._calls: dict[str, DelayedCall] = {}  # cancelled by stop()
        self._authorizing: set[str] = set()  # readers authorising a card now
        self._server = FakeServer(self)
        self.last_stored: Optional[Stored] = None  # the idempotent entry of the request being answered

    # -- knobs ----------------------------------------------------------------------------------

    def reader_knobs(self, reader_id: str) -> ReaderKnobs:
        return self.knobs.setdefault(reader_id, ReaderKnobs())

    def set_online(self, reader_id: str, online: bool) -> None:
        self.readers[reader_id]["status"] = "online" if online else "offline"
        if online:
            self.readers[reader_id]["last_seen_at"] = int(self.clock.seconds() * 1000)

    def fail_next(self, count: int = 1, status: int = 500, match: Optional[str] = None) -> None:
        """Answer the next ``count`` requests (whose path contains ``match``) with ``status`` before doing
        anything: 429 (rate limit) or 5xx from Stripe's edge.  Not stored for idempotency."""
        self.failures.append(FailureKnob(count, status, match))

    def fail_inside(self, count: int = 1, status: int = 500, match: Optional[str] = None,
                    after_commit: bool = False) -> None:
        """Answer the next ``count`` requests (whose path contains ``match``) with ``status`` from inside the
        endpoint: as Stripe does once execution began, the error is stored under the idempotency key, and a
        retry with that key gets the same error again.  With ``after_commit`` the request's change is made
        first (the error came after it), otherwise nothing changes."""
        self._inside.append(FailureKnob(count, status, match, drop=after_commit))

    def failing_inside(self, path: str) -> Optional[FailureKnob]:
        for failure in self._inside:
            if failure.match is None or failure.match in path:
                failure.count -= 1
                if failure.count <= 0:
                    self._inside.remove(failure)
                return failure
        return None

    def drop_next(self, match: str) -> None:
        """Do the next request whose path contains ``match``, keep its result, and drop the connection
        instead of answering (the response lost after the commit)."""
        self.failures.append(FailureKnob(1, 0, match, drop=True))

    def add_location(self, display_name: str = "Shop", country: str = "FR") -> dict:
        location: dict[str, Any] = {
            "id": "tml_" + rand(), "object": "terminal.location", "display_name": display_name,
            "address": {"country": country, "line1": "", "city": "", "postal_code": "", "state": ""},
            "metadata": {}, "livemode": False}
        self.locations[location["id"]] = location
        return location

    def add_reader(self, serial: Optional[str] = None, device_type: str = "simulated_wisepos_e",
                   label: str = "Reader", location: Optional[str] = None, livemode: bool = False) -> dict:
        """A reader already registered to the account, as if through the Dashboard."""
        if location is None:
            location = next(iter(self.locations), None) or self.add_location()["id"]
        reader: dict[str, Any] = {
            "id": "tmr_" + rand(), "object": "terminal.reader", "action": None, "device_sw_version": "2.30.0",
            "device_type": device_type, "ip_address": "0.0.0.0", "label": label,
            "last_seen_at": int(self.clock.seconds() * 1000), "livemode": livemode, "location": location,
            "metadata": {}, "serial_number": serial or str(uuid.uuid4()), "status": "online"}
        self.readers[reader["id"]] = reader
        return reader

    def present(self, reader_id: str, card: str = "4242424242424242") -> dict:
        """The test helper, from Python: the customer presents ``card`` on the reader."""
        return self._present(self._reader(reader_id), {"card_present": {"number": card}})

    def customer_cancel(self, reader_id: str) -> dict:
        """The customer presses cancel on the reader (process_config[enable_customer_cancellation])."""
        reader = self._reader(reader_id)
        action = reader.get("action")
        if not action or action["status"] != "in_progress":
            raise ApiError(400, "This Reader does not have an in-progress action.")
        self._cancel_later("present:" + reader_id)
        action.update(status="failed", failure_code="customer_canceled",
                      failure_message="This action could not be completed due to an error on the card reader.")
        return reader

    def fail_action(self, reader_id: str, code: str, message: Optional[str] = None) -> dict:
        """The reader's in-progress action fails on the reader's side with ``code`` (the PaymentIntent is
        left as it was): a hardware fault, a lost connection to Stripe."""
        reader = self._reader(reader_id)
        action = reader.get("action")
        if not action or action["status"] != "in_progress":
            raise ApiError(400, "This Reader does not have an in-progress action.")
        self._cancel_later("present:" + reader_id)
        action.update(status="failed", failure_code=code,
                      failure_message=message or TERMINAL_MESSAGES.get(code, "The reader reported an error."))
        return reader

    # -- HTTP (bridge.terminals.stripe.fake.http) -------------------------------------------------

    def resource(self) -> Resource:
        """The fake as a twisted.web resource (``/v1/...`` and the ``/_fake/...`` knobs)."""
        return FakeResource(self)

    def listen(self, reactor: Listener, description: str = "tcp:0:interface=127.0.0.1") -> "Deferred[Any]":
        """Serve the fake over HTTP on ``description`` (a Twisted server endpoint); fires with the port."""
        return self._server.listen(reactor, description)

    @property
    def url(self) -> str:
        return self._server.url

    def stop(self) -> "Deferred[None]":
        """Stop listening, drop open connections, cancel pending timers; fires when all is closed."""
        for call in self._calls.values():
            if call.active():
                call.cancel()
        self._calls.clear()
        return self._server.stop()

    def _later(self, name: str, delay: float, function: Callable, *args: Any) -> None:
        old = self._calls.pop(name, None)
        if old is not None and old.active():
            old.cancel()

        def run() -> None:
            self._calls.pop(name, None)
            function(*args)

        self._calls[name] = self.clock.callLater(delay, run)

    def _cancel_later(self, name: str) -> None:
        call = self._calls.pop(name, None)
        if call is not None and call.active():
            call.cancel()

    def handle(self, method: str, path: str, headers: dict[str, Optional[str]], body: bytes,
               query: str) -> tuple[int, dict[str, str], bytes, bool]:
        """One request -> (status, extra headers, body, drop the connection instead of answering): as Stripe's
        edge takes it (:func:`bridge.terminals.stripe.fake.edge.handle`), then :meth:`route`."""
        return handle(self, method, path, headers, body, query)

    # -- routing --------------------------------------------------------------------------------

    def route(self, method: str, path: str, params: dict, version: Optional[str], livemode: bool) -> Any:
        parts = path.strip("/").split("/")
        if parts[:1] != ["v1"]:
            raise ApiError(404, f"Unrecognized request URL ({method}: {path}).", stored=False)
        rest = parts[1:]
        shape = lambda pi: self._shape_intent(pi, version, params.get("expand") or [])  # noqa: E731
        if rest == ["terminal", "locations"]:
            return self._create_location(params) if method == "POST" else \
                self._list(path, self.locations, params)
        if rest[:2] == ["terminal", "locations"] and len(rest) == 3:
            location = self.locations.get(rest[2]) or raise_(no_such("terminal.location", rest[2]))
            if method == "DELETE":
                del self.locations[rest[2]]
                return {"id": rest[2], "object": "terminal.location", "deleted": True}
            if method == "POST":
                check_params(params, {"display_name", "metadata"})
                location.update({k: v for k, v in params.items() if k != "expand"})
            return location
        if rest == ["terminal", "readers"]:
            return self._register_reader(params, livemode) if method == "POST" else self._list_readers(params)
        if rest[:2] == ["terminal", "readers"] and len(rest) >= 3:
            reader = self._reader(rest[2])
            if len(rest) == 3:
                if method == "DELETE":
                    del self.readers[reader["id"]]
                    return {"id": reader["id"], "object": "terminal.reader", "deleted": True}
                if method == "POST":
                    check_params(params, {"label", "metadata"})
                    reader.update({k: v for k, v in params.items() if k != "expand"})
                return self._shape_reader(reader, version, params.get("expand") or [])
            command = rest[3] if len(rest) == 4 else ""
            if method == "POST" and command == "process_payment_intent":
                return self._shape_reader(self._process(reader, params), version, params.get("expand") or [])
            if method == "POST" and command == "cancel_action":
                check_params(params, set())
                return self._shape_reader(self._cancel_action(reader), version, [])
            if method == "POST" and command == "set_reader_display":
                return self._set_display(reader, params)
        if rest[:3] == ["test_helpers", "terminal", "readers"] and len(rest) == 5 and method == "POST" \
                and rest[4] == "present_payment_method":
            reader = self._reader(rest[3])
            if livemode or not reader["device_type"].startswith("simulated_"):
                raise ApiError(400, "Test helpers only work with simulated readers in test mode.")
            return self._shape_reader(self._present(reader, params), version, [])
        if rest == ["payment_intents"]:
            if method == "POST":
                return shape(self._create_intent(params, livemode))
            return self._list(path, self.intents, params, shape)
        if rest[:1] == ["payment_intents"] and len(rest) in (2, 3):
            intent = self.intents.get(rest[1]) or raise_(no_such("payment_intent", rest[1], "intent"))
            if len(rest) == 2:
                if method == "POST":
                    check_params(params, {"metadata", "description"})
                    intent.update({k: v for k, v in params.items() if k != "expand"})
                return shape(intent)
            if method == "POST" and rest[2] == "capture":
                return shape(self._capture(intent, params))
            if method == "POST" and rest[2] == "cancel":
                return shape(self._cancel_intent(intent, params))
        if rest == ["refunds"]:
            if method == "POST":
                return self._create_refund(params)
            items = {k: v for k, v in self.refunds.items()
                     if not params.get("payment_intent") or v["payment_intent"] == params["payment_intent"]}
            return self._list(path, items, {k: v for k, v in params.items() if k != "payment_intent"})
        if rest[:1] == ["refunds"] and len(rest) == 2:
            return self.refunds.get(rest[1]) or raise_(no_such("refund", rest[1]))
        if rest == ["terminal", "connection_tokens"] and method == "POST":
            return {"object": "terminal.connection_token", "secret": "pst_test_" + rand(24)}
        raise ApiError(404, f"Unrecognized request URL ({method}: {path}).", stored=False)

    def _list(self, url: str, items: dict, params: dict, shape: Callable = lambda o: o) -> dict:
        limit = as_int(params.get("limit", "10"), "limit")
        if not 1 <= limit <= 100:
            raise ApiError(400, "Invalid limit: must be between 1 and 100", "parameter_invalid_integer",
                           "limit", stored=False)
        newest_first = list(reversed(list(items.values())))  # dicts keep insertion (creation) order
        if params.get("starting_after"):
            ids = [o["id"] for o in newest_first]
            start = ids.index(params["starting_after"]) + 1 if params["starting_after"] in ids else 0
            newest_first = newest_first[start:]
        page = newest_first[:limit]
        return {"object": "list", "data": [shape(o) for o in page], "has_more": len(newest_first) > limit,
                "url": url}

    def _reader(self, reader_id: str) -> dict:
        return self.readers.get(reader_id) or raise_(no_such("terminal.reader", reader_id))

    def _create_location(self, params: dict) -> dict:
        check_params(params, {"display_name", "address", "metadata", "configuration_overrides"},
                      ("display_name",))
        address = params.get("address") or {}
        if not isinstance(address, dict) or not address.get("country"):
            raise missing("address[country]")
        location = self.add_location(params["display_name"], address["country"])
        location["address"].update(address)
        location["metadata"] = params.get("metadata") or {}
        return location

    def _register_reader(self, params: dict, livemode: bool) -> dict:
        check_params(params, {"registration_code", "location", "label", "metadata"}, ("registration_code",))
        code = params["registration_code"]
        location = params.get("location")
        if location is not None and location not in self.locations:
            raise no_such("terminal.location", location, "location")
        if code in SIMULATED_CODES and not livemode:
            reader = self.add_reader(device_type=SIMULATED_CODES[code], label=params.get("label") or "Reader",
                                     location=location)
        elif code in self.registration_codes:
            device_type, serial = self.registration_codes.pop(code)
            reader = self.add_reader(serial, device_type, params.get("label") or serial, location, livemode)
        else:
            raise ApiError(400, "The registration code you provided is not valid. Please make sure you've "
                                "entered the code shown on your reader.", None, "registration_code")
        reader["metadata"] = params.get("metadata") or {}
        return reader

    def _list_readers(self, params: dict) -> dict:
        check_params(params, {"location", "status", "device_type", "serial_number", "limit", "starting_after",
                               "ending_before"})
        items = {k: r for k, r in self.readers.items()
                 if all(not params.get(f) or r.get(f) == params[f]
                        for f in ("location", "status", "device_type", "serial_number"))}
        return self._list("/v1/terminal/readers", items,
                          {k: v for k, v in params.items() if k in ("limit", "starting_after")},
                          lambda r: self._shape_reader(r, None, []))

    def _shape_reader(self, reader: dict, version: Optional[str], expand: list) -> dict:
        shaped = json.loads(json.dumps(reader))
        action = shaped.get("action")
        if action and (version is None or version < API_ERROR_VERSION):
            action.pop("api_error", None)
        if action and "action.process_payment_intent.payment_intent" in expand and \
                action.get("process_payment_intent"):
            pi = self.intents.get(action["process_payment_intent"]["payment_intent"])
            if pi is not None:
                action["process_payment_intent"]["payment_intent"] = self._shape_intent(pi, version, [])
        return shaped

    # -- readers --------------------------------------------------------------------------------

    def _reader_gate(self, reader: dict) -> Optional[str]:
        """The checks every reader command goes through; returns "false_negative" when the command must be
        done and then reported as timed out."""
        knobs = self.reader_knobs(reader["id"])
        if reader["status"] != "online":
            raise ApiError(400, "Reader is currently offline, please ensure the reader is powered on and "
                                "connected to the internet before retrying your request. " + GUIDE,
                           "terminal_reader_offline")
        if knobs.busy > 0 or reader["id"] in self._authorizing:
            if knobs.busy > 0:
                knobs.busy -= 1
            raise ApiError(400, "Reader is currently busy processing another request, please reference the "
                                "integration guide at https://stripe.com/docs/terminal/payments/collect-payment"
                                "?terminal-sdk-platform=server-driven#handle-errors for details on how to handle "
                                "this error.", "terminal_reader_busy")
        if knobs.error is not None:
            code, knobs.error = knobs.error, None
            raise ApiError(400, TERMINAL_MESSAGES.get(code, "The reader reported an error.") + " " + GUIDE, code)
        if knobs.timeout > 0:
            knobs.timeout -= 1
            raise timeout_error()
        if knobs.timeout_false_negative > 0:
            knobs.timeout_false_negative -= 1
            return "false_negative"
        return None

    def _process(self, reader: dict, params: dict) -> dict:
        check_params(params, {"payment_intent", "process_config"}, ("payment_intent",))
        gate = self._reader_gate(reader)
        pi = self.intents.get(params["payment_intent"]) or raise_(
            no_such("payment_intent", params["payment_intent"], "payment_intent"))
        if pi["status"] != "requires_payment_method":
            raise ApiError(400, "Payment intent must be in the requires_payment_method state to be processed by "
                                "a reader.", "intent_invalid_state")
        config = dict(params.get("process_config") or {})  # a copy: params are kept for idempotent replays
        if "enable_customer_cancellation" in config:
            config["enable_customer_cancellation"] = as_bool(config["enable_customer_cancellation"],
                                                           "process_config[enable_customer_cancellation]")
        if "skip_tipping" in config:
            config["skip_tipping"] = as_bool(config["skip_tipping"], "process_config[skip_tipping]")
        action: dict[str, Any] = {"type": "process_payment_intent", "status": "in_progress",
                                  "failure_code": None, "failure_message": None,
                                  "process_payment_intent": {"payment_intent": pi["id"]}}
        if config:
            action["process_payment_intent"]["process_config"] = config
        reader["action"] = action  # an in-progress action with no card yet is replaced
        knobs = self.reader_knobs(reader["id"])
        if knobs.auto_present:
            self._later("present:" + reader["id"], knobs.auto_present_delay, self._auto_present, reader["id"],
                        pi["id"], knobs.auto_present)
        if gate == "false_negative":
            raise timeout_error()
        return reader

    def _auto_present(self, reader_id: str, pi_id: str, card: str) -> None:
        reader = self.readers.get(reader_id)
        action = reader.get("action") if reader is not None else None
        if reader is not None and action and action["status"] == "in_progress" and \
                action.get("process_payment_intent", {}).get("payment_intent") == pi_id:
            self._present(reader, {"card_present": {"number": card}})

    def _cancel_action(self, reader: dict) -> dict:
        self._reader_gate(reader)
        self._cancel_later("present:" + reader["id"])
        reader["action"] = None
        return reader

    def _set_display(self, reader: dict, params: dict) -> dict:
        check_params(params, {"type", "cart"}, ("type",))
        if params["type"] != "cart" or not isinstance(params.get("cart"), dict):
            raise missing("cart")
        self._reader_gate(reader)
        reader["action"] = {"type": "set_reader_display", "status": "succeeded", "failure_code": None,
                            "failure_message": None, "set_reader_display": {"type": "cart",
                                                                            "cart": params["cart"]}}
        return reader

    def _present(self, reader: dict, params: dict) -> dict:
        check_params(params, {"type", "card_present", "interac_present", "amount_tip", "card"})
        action = reader.get("action")
        if not action or action["status"] != "in_progress" or action["type"] != "process_payment_intent":
            raise ApiError(400, "This Reader does not have an in-progress action to present a payment method "
                                "to.")
        card = (params.get("card_present") or params.get("card") or {}).get("number") or "4242424242424242"
        pi = self.intents[action["process_payment_intent"]["payment_intent"]]
        latency = self.reader_knobs(reader["id"]).auth_latency
        if latency > 0:
            self._authorizing.add(reader["id"])
            self._later("auth:" + reader["id"], latency, self._authorise, reader, pi, card)
        else:
            self._authorise(reader, pi, card)
        return reader

    def _authorise(self, reader: dict, pi: dict, card: str) -> None:
        self._authorizing.discard(reader["id"])
        brand, code, decline = TEST_CARDS.get(card, ("visa", None, None))
        if code is None and pi["amount"] % 100 in TEST_AMOUNTS:
            code, decline = "card_declined", TEST_AMOUNTS[pi["amount"] % 100]
        action = reader["action"]
        created = int(self.clock.seconds())
        card_present = {"brand": brand, "cardholder_name": None, "country": "US", "exp_month": 12,
                        "exp_year": 2030, "fingerprint": rand(16), "funding": "credit", "last4": card[-4:],
                        "read_method": "contact_emv"}
        pm = {"id": "pm_" + rand(), "object": "payment_method", "type": "card_present",
              "billing_details": no_billing_details(), "created": created, "customer": None,
              "livemode": pi["livemode"], "metadata": {},
              "card_present": dict(card_present, networks={"available": [brand], "preferred": None})}
        if code is not None:
            message = DECLINE_MESSAGES.get(decline or code, "Your card was declined.")
            pi["last_payment_error"] = {"type": "card_error", "code": code, "doc_url": DOC + code,
                                        "message": message, "payment_method": json.loads(json.dumps(pm))}
            if decline:
                pi["last_payment_error"]["decline_code"] = decline
            pi["status"] = "requires_payment_method"
            action.update(status="failed", failure_code=code, failure_message=message)
            action["api_error"] = dict(pi["last_payment_error"], payment_intent=pi["id"])
            return
        receipt = {"account_type": "credit", "application_cryptogram": rand(16).upper(),
                   "application_preferred_name": brand.upper(), "authorization_code":
                   f"{secrets.randbelow(10**6):06d}", "authorization_response_code": "3030",
                   "cardholder_verification_method": "approval", "dedicated_file_name": "A0000000031010",
                   "terminal_verification_results": "0000000000", "transaction_status_information": "0000"}
        details = dict(card_present, amount_authorized=pi["amount"], capture_before=created + 2 * 86400,
                       emv_auth_data=rand(16).upper(), generated_card=None,
                       incremental_authorization_supported=False, network=brand, overcapture_supported=False,
                       receipt=receipt)
        charge = {"id": "ch_" + rand(), "object": "charge", "amount": pi["amount"], "amount_captured": 0,
                  "amount_refunded": 0, "application": None, "application_fee": None,
                  "application_fee_amount": None, "balance_transaction": None,
                  "billing_details": no_billing_details(), "calculated_statement_descriptor": "TERMINAL BRIDGE",
                  "captured": False, "created": created, "currency": pi["currency"], "customer": None,
                  "description": pi["description"], "disputed": False, "failure_balance_transaction": None,
                  "failure_code": None, "failure_message": None, "fraud_details": {}, "invoice": None,
                  "livemode": pi["livemode"], "metadata": {}, "on_behalf_of": None,
                  "outcome": {"network_status": "approved_by_network", "reason": None,
                              "risk_level": "not_assessed", "seller_message": "Payment complete.",
                              "type": "authorized"},
                  "paid": True, "payment_intent": pi["id"], "payment_method": pm["id"],
                  "payment_method_details": {"type": "card_present", "card_present": details},
                  "receipt_email": None, "receipt_number": None, "receipt_url": None, "refunded": False,
                  "review": None, "shipping": None, "source_transfer": None, "statement_descriptor": None,
                  "statement_descriptor_suffix": None, "status": "succeeded", "transfer_data": None,
                  "transfer_group": None, "_card": card}
        self.charges[charge["id"]] = charge
        pi.update(payment_method=pm["id"], latest_charge=charge["id"], last_payment_error=None)
        if pi["capture_method"] == "manual":
            pi.update(status="requires_capture", amount_capturable=pi["amount"])
        else:
            pi.update(status="succeeded", amount_received=pi["amount"])
            charge.update(captured=True, amount_captured=pi["amount"])
        if not self.reader_knobs(reader["id"]).lose_completion:
            action.update(status="succeeded")

    # -- payment intents ------------------------------------------------------------------------

    def _create_intent(self, params: dict, livemode: bool) -> dict:
        check_params(params, {"amount", "currency", "payment_method_types", "capture_method", "metadata",
                               "description", "payment_method_options", "statement_descriptor"},
                      ("amount", "currency"))
        amount = as_int(params["amount"], "amount")
        currency = params["currency"].lower()
        if amount < MINIMUMS.get(currency, 1):
            raise ApiError(400, f"Amount must be at least {MINIMUMS[currency]} {currency} (minor units)",
                           "amount_too_small", "amount")
        if amount > 99999999:
            raise ApiError(400, "Amount must be no more than 999,999.99", "amount_too_large", "amount")
        types = params.get("payment_method_types") or ["card"]
        capture = params.get("capture_method") or "automatic"
        if capture not in ("automatic", "automatic_async", "manual"):
            raise ApiError(400, f"Invalid capture_method: {capture}", "parameter_invalid_string",
                           "capture_method", stored=False)
        pi_id = "pi_" + rand(24)
        options = {"card_present": {"request_extended_authorization": False,
                                    "request_incremental_authorization_support": False}} \
            if "card_present" in types else {}
        pi = {"id": pi_id, "object": "payment_intent", "amount": amount, "amount_capturable": 0,
              "amount_details": {"tip": {}}, "amount_received": 0, "application": None,
              "application_fee_amount": None, "automatic_payment_methods": None, "canceled_at": None,
              "cancellation_reason": None, "capture_method": capture,
              "client_secret": f"{pi_id}_secret_{rand(24)}", "confirmation_method": "automatic",
              "created": int(self.clock.seconds()), "currency": currency, "customer": None,
              "description": params.get("description"), "invoice": None, "last_payment_error": None,
              "latest_charge": None, "livemode": livemode, "metadata": params.get("metadata") or {},
              "next_action": None, "on_behalf_of": None, "payment_method": None,
              "payment_method_options": options, "payment_method_types": types, "processing": None,
              "receipt_email": None, "review": None, "setup_future_usage": None, "shipping": None,
              "statement_descriptor": None, "statement_descriptor_suffix": None,
              "status": "requires_payment_method", "transfer_data": None, "transfer_group": None}
        self.intents[pi_id] = pi
        return pi

    def _capture(self, pi: dict, params: dict) -> dict:
        check_params(params, {"amount_to_capture", "metadata"})
        if pi["status"] != "requires_capture":
            raise ApiError(400, f"This PaymentIntent could not be captured because it has a status of "
                                f"{pi['status']}. Only a PaymentIntent with one of the following statuses may be "
                                "captured: requires_capture.", "payment_intent_unexpected_state",
                           payment_intent=self._shape_intent(pi, None, []))
        amount = as_int(params.get("amount_to_capture", str(pi["amount_capturable"])), "amount_to_capture")
        if amount > pi["amount_capturable"] and not self.allow_over_capture:
            raise ApiError(400, "The amount to capture must be less than or equal to the amount capturable.",
                           "amount_too_large", "amount_to_capture")
        charge = self.charges[pi["latest_charge"]]
        if self.capture_status != "succeeded":
            pi["status"] = self.capture_status
            return pi
        charge.update(captured=True, amount_captured=amount)
        pi.update(status="succeeded", amount_received=amount, amount_capturable=0)
        return pi

    def _cancel_intent(self, pi: dict, params: dict) -> dict:
        check_params(params, {"cancellation_reason"})
        if pi["status"] in ("succeeded", "canceled"):
            raise ApiError(400, f"You cannot cancel this PaymentIntent because it has a status of "
                                f"{pi['status']}. Only a PaymentIntent with one of the following statuses may be "
                                "canceled: requires_payment_method, requires_capture, requires_confirmation, "
                                "requires_action, processing.", "payment_intent_unexpected_state")
        pi.update(status="canceled", canceled_at=int(self.clock.seconds()),
                  cancellation_reason=params.get("cancellation_reason"), amount_capturable=0)
        return pi

    def _shape_intent(self, pi: dict, version: Optional[str], expand: list) -> dict:
        shaped = {k: v for k, v in pi.items()}
        charge = self.charges.get(pi["latest_charge"]) if pi["latest_charge"] else None
        public = {k: v for k, v in charge.items() if not k.startswith("_")} if charge else None
        if version is None or version < LATEST_CHARGE_VERSION:
            del shaped["latest_charge"]
            shaped["charges"] = {"object": "list", "data": [public] if public else [], "has_more": False,
                                 "url": f"/v1/charges?payment_intent={pi['id']}"}
        elif "latest_charge" in expand and public:
            shaped["latest_charge"] = public
        return json.loads(json.dumps(shaped))

    # -- refunds --------------------------------------------------------------------------------

    def _create_refund(self, params: dict) -> dict:
        check_params(params, {"payment_intent", "charge", "amount", "reason", "metadata"})
        if params.get("payment_intent"):
            pi = self.intents.get(params["payment_intent"]) or raise_(
                no_such("payment_intent", params["payment_intent"], "payment_intent"))
            charge = self.charges.get(pi["latest_charge"] or "")
        elif params.get("charge"):
            charge = self.charges.get(params["charge"]) or raise_(no_such("charge", params["charge"], "charge"))
            pi = self.intents[charge["payment_intent"]]
        else:
            raise missing("payment_intent")
        if pi["status"] != "succeeded" or charge is None:
            raise ApiError(400, "This PaymentIntent does not have a successful charge to refund.",
                           "charge_not_refundable" if pi["status"] != "canceled" else "charge_already_refunded")
        left = charge["amount_captured"] - charge["amount_refunded"]
        amount = as_int(params["amount"], "amount") if "amount" in params else left
        if amount <= 0 or amount > left:
            raise ApiError(400, f"Refund amount ({amount}) is greater than unrefunded amount on charge ({left})",
                           "amount_too_large", "amount")
        refund = {"id": "re_" + rand(), "object": "refund", "amount": amount, "charge": charge["id"],
                  "payment_intent": pi["id"], "currency": pi["currency"], "metadata": params.get("metadata") or {},
                  "reason": params.get("reason"), "status": "succeeded", "created": int(self.clock.seconds()),
                  "balance_transaction": None, "receipt_number": None, "source_transfer_reversal": None,
                  "transfer_reversal": None}
        if charge.get("_card") == "4000000000005126":
            refund["status"] = "pending"
            self._later("refund:" + refund["id"], 1.0, refund.update,
                        {"status": "failed", "failure_reason": "expired_or_canceled_card"})
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] == charge["amount_captured"]
        self.refunds[refund["id"]] = refund
        return refund

    def handle_knob(self, path: str, body: bytes) -> tuple[int, Any]:
        """A ``POST /_fake/...`` knob from another process (:func:`bridge.terminals.stripe.fake.knobs.handle_knob`)."""
        return handle_knob(self, path, body)
