"""The fake Stripe API checked against the facts in the research notes: encoding, auth, idempotency, errors."""

from __future__ import annotations

import base64
import io
import json
import os
import sys
from urllib.parse import quote

import requests
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread

from bridge.cli.main import main
from bridge.terminals.stripe.api import StripeCallError
from bridge.cli.simulators import loopback_endpoint, start_fake
from bridge.terminals.stripe.fake import FakeStripe, decode_form
from bridge.terminals.stripe.options import API_VERSION
from tests.stripe_support import KEY, OpenAPIValidator, StripeTestCase


def _encode(value, prefix=""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _encode(v, f"{prefix}[{k}]" if prefix else k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _encode(v, f"{prefix}[{i}]")
    else:
        yield f"{quote(prefix, safe='[]')}={quote(value, safe='')}"


_names = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)
_leaf = st.text(max_size=10)
_forms = st.recursive(_leaf, lambda inner: st.one_of(st.lists(inner, min_size=1, max_size=3),
                                                     st.dictionaries(_names, inner, min_size=1, max_size=3)),
                      max_leaves=8)


@settings(max_examples=60)
@given(st.dictionaries(_names, _forms, max_size=4))
def test_decode_form_reads_back_nested_params(params):
    assert decode_form("&".join(_encode(params))) == params


def test_decode_form_reads_empty_brackets_and_percent_encoded_brackets():
    assert decode_form("payment_method_types[]=card_present&payment_method_types[]=interac_present") == \
        {"payment_method_types": ["card_present", "interac_present"]}
    assert decode_form("metadata%5Bpayment_id%5D=pay_1&expand%5B0%5D=latest_charge") == \
        {"metadata": {"payment_id": "pay_1"}, "expand": ["latest_charge"]}


def test_an_idempotency_key_is_kept_24_hours_then_forgotten_as_stripe_does():
    """Stripe prunes a key once it is at least 24 hours old; a request reusing it then is a new request."""
    clock = Clock()
    fake = FakeStripe(clock)
    validator = OpenAPIValidator.load()
    headers = {"authorization": f"Bearer {KEY}", "idempotency-key": "k-day", "stripe-version": API_VERSION}

    def post(body):
        status, extra, payload, _ = fake.handle("POST", "/v1/payment_intents", dict(headers), body.encode(), "")
        answer = json.loads(payload)
        assert validator.check_answer("POST", "/v1/payment_intents", status, answer) == []
        return status, extra, answer

    status, _, first = post("amount=1234&currency=eur")
    assert status == 200
    clock.advance(24 * 3600 - 1)
    status, extra, again = post("amount=1234&currency=eur")
    assert (status, again["id"], extra.get("Idempotent-Replayed")) == (200, first["id"], "true")
    status, _, refused = post("amount=999&currency=eur")
    assert (status, refused["error"]["type"]) == (400, "idempotency_error")
    clock.advance(2)
    status, extra, fresh = post("amount=999&currency=eur")
    assert (status, fresh["amount"], "Idempotent-Replayed" in extra) == (200, 999, False)
    assert fresh["id"] != first["id"] and len(fake.intents) == 2


def test_the_simulator_listens_on_loopback_unless_told_otherwise():
    assert loopback_endpoint("tcp:12111") == "tcp:12111:interface=127.0.0.1"
    assert loopback_endpoint("tcp:12111:interface=0.0.0.0") == "tcp:12111:interface=0.0.0.0"


class FakeHTTPTests(StripeTestCase):
    def raw(self, method, path, data=None, key=KEY, headers=None, basic=False):
        sent = dict(headers or {})
        if key is not None:
            sent["Authorization"] = ("Basic " + base64.b64encode(f"{key}:".encode()).decode()) if basic \
                else f"Bearer {key}"
        if data is not None:
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        return deferToThread(requests.request, method, self.fake.url + path, data=data, headers=sent, timeout=5)

    @inlineCallbacks
    def test_a_replay_returns_the_stored_answer_and_says_so(self):
        body = "amount=1234&currency=eur&capture_method=manual&payment_method_types[]=card_present"
        first = yield self.raw("POST", "/v1/payment_intents", body, headers={"Idempotency-Key": "k1"})
        again = yield self.raw("POST", "/v1/payment_intents", body, headers={"Idempotency-Key": "k1"})
        self.assertEqual(first.status_code, 200)
        self.assertEqual(again.json(), first.json())
        self.assertEqual(again.headers["Idempotent-Replayed"], "true")
        self.assertEqual(again.headers["Original-Request"], first.headers["Request-Id"])
        self.assertEqual(len(self.fake.intents), 1)

    @inlineCallbacks
    def test_the_same_key_with_other_params_is_an_idempotency_error(self):
        api = self.make_api()
        yield api.create_payment_intent(1234, "EUR", "pay_1", "k1")
        error = yield self.assertFailure(api.create_payment_intent(999, "EUR", "pay_1", "k1"), StripeCallError)
        self.assertEqual((error.code, error.http_status), ("stripe_idempotency_error", 400))
        self.assertEqual(error.stripe_message, "Keys for idempotent requests can only be used with the same "
                                               "parameters they were first used with. Try using a key other than "
                                               "'k1' if you meant to execute a different request.")
        # Another endpoint under the same key is refused alike, and nothing was done.
        other = yield self.raw("POST", "/v1/refunds", "payment_intent=pi_x", headers={"Idempotency-Key": "k1"})
        self.assertEqual((other.status_code, other.json()["error"]["type"]), (400, "idempotency_error"))
        self.assertEqual((len(self.fake.intents), len(self.fake.refunds)), (1, 0))

    @inlineCallbacks
    def test_a_stored_500_is_replayed_to_a_retry_with_the_same_key(self):
        self.fake.fail_inside(match="/v1/payment_intents")
        body = "amount=1234&currency=eur&capture_method=manual"
        first = yield self.raw("POST", "/v1/payment_intents", body, headers={"Idempotency-Key": "k500"})
        again = yield self.raw("POST", "/v1/payment_intents", body, headers={"Idempotency-Key": "k500"})
        self.assertEqual((first.status_code, first.json()["error"]["type"]), (500, "api_error"))
        self.assertEqual((again.status_code, again.content), (500, first.content))
        self.assertEqual(again.headers["Idempotent-Replayed"], "true")
        self.assertEqual(again.headers["Original-Request"], first.headers["Request-Id"])
        self.assertEqual(self.fake.intents, {})
        fresh = yield self.raw("POST", "/v1/payment_intents", body, headers={"Idempotency-Key": "k501"})
        self.assertEqual(fresh.status_code, 200)

    @inlineCallbacks
    def test_a_500_after_the_change_is_stored_too_and_the_change_stands(self):
        self.fake.fail_inside(match="/v1/payment_intents", after_commit=True)
        body = "amount=1234&currency=eur"
        first = yield self.raw("POST", "/v1/payment_intents", body, headers={"Idempotency-Key": "k502"})
        again = yield self.raw("POST", "/v1/payment_intents", body, headers={"Idempotency-Key": "k502"})
        self.assertEqual((first.status_code, again.status_code), (500, 500))
        self.assertEqual(len(self.fake.intents), 1)

    @inlineCallbacks
    def test_failures_before_the_endpoint_runs_are_not_stored(self):
        self.fake.fail_next(status=503, match="/v1/payment_intents")
        body = "amount=1234&currency=eur"
        first = yield self.raw("POST", "/v1/payment_intents", body, headers={"Idempotency-Key": "k503"})
        again = yield self.raw("POST", "/v1/payment_intents", body, headers={"Idempotency-Key": "k503"})
        self.assertEqual((first.status_code, again.status_code), (503, 200))
        self.assertNotIn("Idempotent-Replayed", again.headers)

    @inlineCallbacks
    def test_errors_are_replayed_but_validation_failures_are_not_stored(self):
        bad = yield self.raw("POST", "/v1/payment_intents", "amount=1234&currency=eur&colour=red",
                             headers={"Idempotency-Key": "k2"})
        self.assertEqual(bad.status_code, 400)
        self.assertEqual(bad.json()["error"], {"type": "invalid_request_error", "code": "parameter_unknown",
                                               "param": "colour", "message": "Received unknown parameter: colour",
                                               "doc_url": "https://stripe.com/docs/error-codes/parameter_unknown"})
        good = yield self.raw("POST", "/v1/payment_intents", "amount=1234&currency=eur",
                              headers={"Idempotency-Key": "k2"})
        self.assertEqual(good.status_code, 200)
        small = "amount=10&currency=eur"
        first = yield self.raw("POST", "/v1/payment_intents", small, headers={"Idempotency-Key": "k3"})
        again = yield self.raw("POST", "/v1/payment_intents", small, headers={"Idempotency-Key": "k3"})
        self.assertEqual((first.json()["error"]["code"], first.json()["error"]["param"]), ("amount_too_small",
                                                                                            "amount"))
        self.assertEqual((again.status_code, again.headers.get("Idempotent-Replayed")), (400, "true"))

    @inlineCallbacks
    def test_a_duplicate_in_flight_gets_409(self):
        self.fake.slow = 0.3
        body = "amount=1234&currency=eur"
        answers = yield gatherResults([
            self.raw("POST", "/v1/payment_intents", body, headers={"Idempotency-Key": "k4"}),
            self.raw("POST", "/v1/payment_intents", body, headers={"Idempotency-Key": "k4"})])
        self.assertEqual(sorted(a.status_code for a in answers), [200, 409])

    @inlineCallbacks
    def test_auth_bearer_basic_missing_and_wrong_keys(self):
        ok = yield self.raw("GET", "/v1/terminal/readers", basic=True)
        self.assertEqual(ok.status_code, 200)
        self.assertEqual(ok.json()["object"], "list")
        missing = yield self.raw("GET", "/v1/terminal/readers", key=None)
        self.assertEqual(missing.status_code, 401)
        self.assertIn("You did not provide an API key", missing.json()["error"]["message"])
        live = yield self.raw("GET", "/v1/terminal/readers", key="sk_live_abcdef")
        self.assertEqual(live.status_code, 401)
        self.assertEqual(live.json()["error"]["type"], "invalid_request_error")

    @inlineCallbacks
    def test_unknown_ids_are_resource_missing(self):
        answer = yield self.raw("GET", "/v1/payment_intents/pi_nope")
        self.assertEqual(answer.status_code, 404)
        self.assertEqual(answer.json()["error"]["message"], "No such payment_intent: 'pi_nope'")
        self.assertEqual(answer.json()["error"]["code"], "resource_missing")

    @inlineCallbacks
    def test_the_api_version_shapes_the_payment_intent(self):
        api = self.make_api()
        pi = yield api.create_payment_intent(1234, "EUR", "pay_1", "k5")
        yield api.process_payment_intent(self.reader["id"], pi["id"], "k6")
        self.fake.present(self.reader["id"])
        old = yield self.raw("GET", f"/v1/payment_intents/{pi['id']}")
        self.assertEqual(old.json()["charges"]["data"][0]["payment_intent"], pi["id"])
        self.assertNotIn("latest_charge", old.json())
        new = yield self.raw("GET", f"/v1/payment_intents/{pi['id']}?expand[]=latest_charge",
                             headers={"Stripe-Version": "2024-06-20"})
        self.assertEqual(new.json()["latest_charge"]["object"], "charge")
        self.assertNotIn("charges", new.json())

    @inlineCallbacks
    def test_booleans_as_either_library_sends_them(self):
        api = self.make_api()
        for spelling in ("True", "true"):
            pi = yield api.create_payment_intent(1234, "EUR", "pay_1", "k-" + spelling)
            answer = yield self.raw("POST", f"/v1/terminal/readers/{self.reader['id']}/process_payment_intent",
                                    f"payment_intent={pi['id']}&process_config[enable_customer_cancellation]="
                                    f"{spelling}")
            config = answer.json()["action"]["process_payment_intent"]["process_config"]
            self.assertIs(config["enable_customer_cancellation"], True)

    @inlineCallbacks
    def test_terminal_errors_have_stripes_shape(self):
        self.knobs.auth_latency = 0.3
        api = self.make_api()
        pi = yield api.create_payment_intent(1234, "EUR", "pay_1", "k7")
        yield api.process_payment_intent(self.reader["id"], pi["id"], "k8")
        self.fake.present(self.reader["id"])
        busy = yield self.raw("POST", f"/v1/terminal/readers/{self.reader['id']}/cancel_action", "")
        error = busy.json()["error"]
        self.assertEqual((busy.status_code, error["code"], error["type"]),
                         (400, "terminal_reader_busy", "invalid_request_error"))
        self.assertTrue(error["doc_url"].endswith("terminal_reader_busy"))
        again = yield self.raw("POST", f"/v1/terminal/readers/{self.reader['id']}/process_payment_intent",
                               f"payment_intent={pi['id']}")
        self.assertEqual(again.json()["error"]["code"], "terminal_reader_busy")
        yield self.wait_for(lambda: self.intent(pi["id"])["status"] == "requires_capture", "authorisation")
        twice = yield self.raw("POST", f"/v1/terminal/readers/{self.reader['id']}/process_payment_intent",
                               f"payment_intent={pi['id']}")
        self.assertEqual(twice.json()["error"]["code"], "intent_invalid_state")
        yield api.capture(pi["id"], "k9")
        capture = yield self.raw("POST", f"/v1/payment_intents/{pi['id']}/capture", "")
        self.assertEqual(capture.json()["error"]["code"], "payment_intent_unexpected_state")

    @inlineCallbacks
    def test_registration_codes(self):
        location = self.fake.add_location("Shop")["id"]
        self.fake.registration_codes["sepia-cerulean-aqua"] = ("bbpos_wisepos_e", "WSC000000000001")
        simulated = yield self.raw("POST", "/v1/terminal/readers",
                                   f"registration_code=simulated-wpe&location={location}&label=Sim")
        self.assertEqual((simulated.json()["device_type"], simulated.json()["status"]),
                         ("simulated_wisepos_e", "online"))
        real = yield self.raw("POST", "/v1/terminal/readers",
                              f"registration_code=sepia-cerulean-aqua&location={location}&label=Till")
        self.assertEqual((real.json()["device_type"], real.json()["serial_number"]),
                         ("bbpos_wisepos_e", "WSC000000000001"))
        wrong = yield self.raw("POST", "/v1/terminal/readers", "registration_code=not-a-code")
        self.assertEqual((wrong.status_code, wrong.json()["error"]["param"]), (400, "registration_code"))
        found = yield self.raw("GET", "/v1/terminal/readers?serial_number=WSC000000000001")
        self.assertEqual([r["id"] for r in found.json()["data"]], [real.json()["id"]])

    @inlineCallbacks
    def test_test_helper_refuses_without_an_action(self):
        answer = yield self.raw("POST", f"/v1/test_helpers/terminal/readers/{self.reader['id']}/"
                                        "present_payment_method", "card_present[number]=4242424242424242")
        self.assertEqual(answer.status_code, 400)

    @inlineCallbacks
    def test_knobs_over_http(self):
        answer = yield self.raw("POST", f"/_fake/readers/{self.reader['id']}", json.dumps({"status": "offline"}))
        self.assertEqual(answer.status_code, 200)
        self.assertEqual(self.fake.readers[self.reader["id"]]["status"], "offline")
        unknown = yield self.raw("POST", f"/_fake/readers/{self.reader['id']}", json.dumps({"colour": 1}))
        self.assertEqual(unknown.status_code, 400)


class CommandLineTests(StripeTestCase):
    @inlineCallbacks
    def cli(self, *argv):
        key_file = os.path.join(self.mktemp())
        with open(key_file, "w") as f:
            f.write("rk_test_setup\n")
        out = io.StringIO()
        saved, sys.stdout = sys.stdout, out
        try:
            status = yield deferToThread(main, ["--config", "/nonexistent", "stripe", "--api-key-file", key_file,
                                                "--api-base", self.fake.url, *argv])
        finally:
            sys.stdout = saved
        return status, out.getvalue()

    @inlineCallbacks
    def test_locations_readers_and_register(self):
        status, out = yield self.cli("locations", "--create", "Main shop", "--country", "fr", "--city", "Lyon")
        self.assertEqual(status, 0)
        location = out.split()[2]
        self.assertTrue(location.startswith("tml_"))
        status, out = yield self.cli("locations")
        self.assertIn("Main shop", out)
        status, out = yield self.cli("register", "--code", "simulated-wpe", "--location", location,
                                     "--label", "Till 2")
        self.assertEqual(status, 0)
        self.assertIn("type = stripe", out)
        self.assertIn("[terminal:till-2]", out)
        status, out = yield self.cli("readers", "--location", location)
        self.assertIn("Till 2", out)
        self.assertIn("simulated_wisepos_e", out)

    @inlineCallbacks
    def test_a_bad_registration_code_says_so(self):
        saved, sys.stderr = sys.stderr, io.StringIO()
        try:
            status, _ = yield self.cli("register", "--code", "wrong", "--location", "tml_x", "--label", "T")
            said = sys.stderr.getvalue()
        finally:
            sys.stderr = saved
        self.assertEqual(status, 1)
        self.assertIn("Stripe says", said)

    @inlineCallbacks
    def test_simulate_stripe_serves_readers_that_present_a_card(self):
        import argparse

        args = argparse.Namespace(listen="tcp:0", reader=["SIM-9"], auto_present="4242424242424242", delay=0.05)
        fake = yield start_fake(reactor, args)
        self.addCleanup(fake.stop)
        self.assertTrue(fake.url.startswith("http://127.0.0.1:"), fake.url)
        reader = next(iter(fake.readers.values()))
        self.assertEqual(reader["serial_number"], "SIM-9")
        self.assertEqual(fake.reader_knobs(reader["id"]).auto_present, "4242424242424242")
