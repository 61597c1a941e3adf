"""The answers of the fake Stripe API against Stripe's OpenAPI specification (tests/data/stripe_openapi).

Every Stripe test checks the fake's answers through ``StripeTestCase`` (``tests/stripe_support.py``); these tests
pin the checker itself, so that a clean run means something.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.stripe_support import SCHEMAS_FILE, OpenAPIValidator, SendRecorder, StripeTestCase

_SCHEMA = {"type": "object", "required": ["id", "status"],
           "properties": {"id": {"type": "string", "pattern": "^pi_"},
                          "status": {"type": "string", "enum": ["succeeded", "canceled"]},
                          "amount": {"type": "integer"},
                          "note": {"type": "string", "nullable": True, "maxLength": 5},
                          "charge": {"anyOf": [{"type": "string"}, {"$ref": "#/components/schemas/charge"}],
                                     "nullable": True},
                          "items": {"type": "array", "items": {"$ref": "#/components/schemas/charge"}},
                          "metadata": {"type": "object", "additionalProperties": {"type": "string"}}}}


class ValidatorTests(TestCase):
    def setUp(self):
        self.validator = OpenAPIValidator({
            "api_version": "test", "operations": {},
            "schemas": {"charge": {"type": "object", "required": ["paid"],
                                   "properties": {"paid": {"type": "boolean"}}}}})

    def check(self, value):
        return self.validator.violations(_SCHEMA, value)

    def test_a_conforming_object_has_no_violation(self):
        self.assertEqual(self.check({"id": "pi_1", "status": "succeeded", "amount": 5, "note": None,
                                     "charge": {"paid": True}, "items": [{"paid": False}],
                                     "metadata": {"a": "b"}, "unknown_field": [1]}), [])

    def test_each_rule_is_enforced(self):
        cases = {
            "$.status: missing (required)": {"id": "pi_1"},
            "$.id: 'ch_1' does not match '^pi_'": {"id": "ch_1", "status": "succeeded"},
            "$.status: 'paid' is not one of ['succeeded', 'canceled']": {"id": "pi_1", "status": "paid"},
            "$.amount: a boolean where the schema has integer": {"id": "pi_1", "status": "canceled",
                                                                  "amount": True},
            "$.note: longer than 5": {"id": "pi_1", "status": "canceled", "note": "too long"},
            "$.id: null where the schema does not allow null": {"id": None, "status": "canceled"},
            "$.items[0].paid: missing (required)": {"id": "pi_1", "status": "canceled", "items": [{}]},
            "$.metadata.a: an integer where the schema has string": {"id": "pi_1", "status": "canceled",
                                                                     "metadata": {"a": 1}},
            "$.charge: matches none of the 2 alternatives; as an object: $.charge.paid: missing (required)":
                {"id": "pi_1", "status": "canceled", "charge": {}},
        }
        for expected, value in cases.items():
            self.assertEqual(self.check(value), [expected])

    def test_a_request_path_finds_its_operation_with_literal_segments_first(self):
        validator = OpenAPIValidator.load()
        self.assertEqual(validator.operation("POST", "/v1/payment_intents/pi_1/capture")[0],
                         "POST /v1/payment_intents/{intent}/capture")
        self.assertEqual(validator.operation("GET", "/v1/terminal/readers")[0], "GET /v1/terminal/readers")
        self.assertIsNone(validator.operation("PUT", "/v1/payment_intents"))
        self.assertEqual(validator.check_answer("GET", "/v1/nowhere", 200, {}),
                         ["GET /v1/nowhere: no such operation in Stripe's specification"])


class TrimmedSpecificationTests(TestCase):
    def test_the_copy_says_what_it_is_and_stays_small(self):
        with open(SCHEMAS_FILE, encoding="utf-8") as f:
            document = json.load(f)
        self.assertEqual(document["api_version"], "2023-08-16")
        self.assertIn("63a674638635c68de26b9f3add13e58198f4df44", document["source"])
        self.assertLess(os.path.getsize(SCHEMAS_FILE), 400_000)
        readme = os.path.join(os.path.dirname(SCHEMAS_FILE), "README.md")
        with open(readme, encoding="utf-8") as f:
            self.assertIn("MIT", f.read())

    def test_the_script_regenerates_the_copy_from_a_specification_file(self):
        # A miniature specification in Stripe's layout: the script keeps what the operations reach, no more.
        spec = {"openapi": "3.0.0", "info": {"version": "2099-01-01"}, "paths": {}, "components": {"schemas": {
            "thing": {"type": "object", "description": "dropped", "x-resourceId": "thing",
                      "properties": {"part": {"$ref": "#/components/schemas/part"},
                                     "customer": {"anyOf": [{"type": "string"},
                                                            {"$ref": "#/components/schemas/customer"}],
                                                  "x-expansionResources": {}}}},
            "part": {"type": "string"}, "customer": {"type": "object"}, "unused": {"type": "object"},
            "error": {"type": "object"}}}}
        answer = {"responses": {"200": {"content": {"application/json": {"schema": {
            "$ref": "#/components/schemas/thing"}}}}, "default": {"content": {"application/json": {"schema": {
                "$ref": "#/components/schemas/error"}}}}}}
        script = os.path.join(os.path.dirname(SCHEMAS_FILE), "make_schemas.py")
        sys.path.insert(0, os.path.dirname(script))
        self.addCleanup(sys.path.remove, os.path.dirname(script))
        import make_schemas

        for method, template in make_schemas.OPERATIONS:
            spec["paths"].setdefault(template, {})[method] = answer
        directory = self.mktemp()
        os.makedirs(directory)
        path, out = os.path.join(directory, "spec3.json"), os.path.join(directory, "schemas.json")
        with open(path, "w") as f:
            json.dump(spec, f)
        subprocess.run([sys.executable, script, path, "--source", "mini", "--out", out], check=True,
                       stdout=subprocess.DEVNULL)
        with open(out) as f:
            made = json.load(f)
        self.assertEqual((made["api_version"], made["source"]), ("2099-01-01", "mini"))
        self.assertEqual(sorted(made["schemas"]), ["error", "part", "thing"])
        self.assertEqual(made["schemas"]["thing"]["properties"]["customer"], {"anyOf": [{"type": "string"}]})
        self.assertNotIn("description", made["schemas"]["thing"])


class CheckerTests(StripeTestCase):
    @inlineCallbacks
    def test_every_answer_of_a_payment_and_its_refund_is_checked_and_conforms(self):
        self.auto_present()
        driver = self.make_driver()
        request = self.request()
        outcome = yield driver.pay(request, SendRecorder(self.fake))
        refund = yield driver.pay(self.refund_request(request, outcome, 500), SendRecorder(self.fake))
        self.assertEqual((outcome.state, refund.state), ("approved", "approved"))
        self.assertEqual(self.answers.checked, len(self.fake.requests))
        self.assertEqual((self.answers.skipped, self.answers.violations), (0, []))

    @inlineCallbacks
    def test_a_fake_that_drifts_from_stripe_is_caught(self):
        create = self.fake._create_intent

        def drifting(params, livemode):
            pi = create(params, livemode)
            del pi["confirmation_method"]
            return pi

        self.fake._create_intent = drifting
        yield self.make_api().create_payment_intent(1234, "EUR", "pay_1", "k1")
        found, self.answers.violations = self.answers.violations, []  # taken: this test's cleanup must pass
        self.assertEqual(found, ["POST /v1/payment_intents -> 200: $.confirmation_method: missing (required)"])
        with self.assertRaises(AssertionError):
            self.answers.violations = found
            self.answers.assert_clean()
        self.answers.violations = []
