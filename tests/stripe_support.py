"""Shared set-up for the Stripe tests: the fake Stripe API on 127.0.0.1 and a driver using the real library."""

from __future__ import annotations

import json
import os
import re
from typing import Any, Callable, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from bridge.core.money import CURRENCIES
from bridge.core.contract import DEBIT, REFUND, PaymentRequest
from bridge.terminals.stripe.api import StripeAPI
from bridge.terminals.stripe.driver import StripeReaderDriver
from bridge.terminals.stripe.fake import LATEST_CHARGE_VERSION, FakeStripe

EUR = CURRENCIES["EUR"]
SERIAL = "WSC513105011295"
KEY = "sk_test_bridge"
SCHEMAS_FILE = os.path.join(os.path.dirname(__file__), "data", "stripe_openapi", "schemas.json")


class OpenAPIValidator:
    """The OpenAPI 3.0 subset Stripe's specification uses for its answers: ``$ref``, ``type``, ``nullable``,
    ``properties``, ``required``, ``additionalProperties``, ``items``, ``enum``, ``anyOf``, ``pattern`` and
    ``maxLength``.  Properties a schema does not name are allowed (Stripe adds fields in new API versions)."""

    _TYPES: dict[str, Callable[[Any], bool]] = {
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        "boolean": lambda v: isinstance(v, bool),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    }

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.api_version: str = document["api_version"]
        self._operations = []
        for name, answers in document["operations"].items():
            method, template = name.split(" ", 1)
            regex = re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$")
            self._operations.append((method, regex, template.count("{"), name, answers))
        self._operations.sort(key=lambda op: op[2])  # literal segments win over {id}

    @classmethod
    def load(cls, path: str = SCHEMAS_FILE) -> "OpenAPIValidator":
        with open(path, encoding="utf-8") as f:
            return cls(json.load(f))

    def operation(self, method: str, path: str) -> Optional[tuple[str, dict]]:
        for op_method, regex, _, name, answers in self._operations:
            if op_method == method.upper() and regex.match(path):
                return name, answers
        return None

    def check_answer(self, method: str, path: str, status: int, body: Any) -> list[str]:
        """Violations of the answer ``body`` (decoded JSON) to ``method path`` with HTTP ``status``."""
        found = self.operation(method, path)
        if found is None:
            return [f"{method} {path}: no such operation in Stripe's specification"]
        name, answers = found
        schema = answers["200"] if status == 200 else answers["default"]
        return [f"{name} -> {status}: {v}" for v in self.violations(schema, body)]

    def _type(self, schema: dict[str, Any]) -> Optional[str]:
        while "$ref" in schema:
            schema = self.document["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
        return schema.get("type")

    @staticmethod
    def _type_name(value: Any) -> str:
        return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "an integer",
                float: "a number"}.get(type(value), type(value).__name__)

    def violations(self, schema: dict[str, Any], value: Any, where: str = "$") -> list[str]:
        if "$ref" in schema:
            return self.violations(self.document["schemas"][schema["$ref"].rsplit("/", 1)[-1]], value, where)
        if value is None:
            return [] if schema.get("nullable") else [f"{where}: null where the schema does not allow null"]
        if "anyOf" in schema:
            alternatives = schema["anyOf"]
            tried = [self.violations(alternative, value, where) for alternative in alternatives]
            if not all(tried):
                return []
            if len(tried) == 1:
                return tried[0]
            # Report the alternative of the value's own type (an expanded object, not its id), else the closest.
            same_type = [t for a, t in zip(alternatives, tried) if self._TYPES.get(self._type(a), bool)(value)]
            closest = min(same_type or tried, key=len)
            return [f"{where}: matches none of the {len(tried)} alternatives; as {self._type_name(value)}: "
                    + "; ".join(closest)]
        kind = schema.get("type")
        if kind is not None and not self._TYPES[kind](value):
            return [f"{where}: {self._type_name(value)} where the schema has {kind}"]
        problems = []
        if "enum" in schema and value not in schema["enum"]:
            problems.append(f"{where}: {value!r} is not one of {schema['enum']}")
        if isinstance(value, str):
            if "pattern" in schema and not re.search(schema["pattern"], value):
                problems.append(f"{where}: {value!r} does not match {schema['pattern']!r}")
            if "maxLength" in schema and len(value) > schema["maxLength"]:
                problems.append(f"{where}: longer than {schema['maxLength']}")
        if isinstance(value, list) and "items" in schema:
            for i, item in enumerate(value):
                problems += self.violations(schema["items"], item, f"{where}[{i}]")
        if isinstance(value, dict):
            properties = schema.get("properties") or {}
            for name in schema.get("required") or ():
                if name not in value:
                    problems.append(f"{where}.{name}: missing (required)")
            extra = schema.get("additionalProperties")
            for name, item in value.items():
                if name in properties:
                    problems += self.violations(properties[name], item, f"{where}.{name}")
                elif isinstance(extra, dict):
                    problems += self.violations(extra, item, f"{where}.{name}")
        return problems


def distinct(violations: list[str]) -> set[str]:
    """Violations with list positions taken out: the distinct ways the answers broke a schema."""
    return {re.sub(r"\[\d+\]", "[]", v) for v in violations}


class AnswerChecker:
    """Checks every answer the fake gives over HTTP against Stripe's specification (``tests/data/stripe_openapi``).

    Answers to requests pinned to an API version before 2022-11-15 (or sent without ``Stripe-Version``) have
    ``charges`` instead of ``latest_charge``, a shape the specification no longer describes: their errors are
    checked, their other answers counted in ``skipped``."""

    validator: Optional[OpenAPIValidator] = None

    def __init__(self, fake: FakeStripe) -> None:
        if AnswerChecker.validator is None:
            AnswerChecker.validator = OpenAPIValidator.load()
        self.checked = 0
        self.skipped = 0
        self.violations: list[str] = []
        self.broken = 0  # answers with at least one violation
        self._handle = fake.handle
        fake.handle = self.handle  # type: ignore[method-assign]

    def handle(self, method: str, path: str, headers: dict, body: bytes, query: str) -> tuple:
        answer = self._handle(method, path, headers, body, query)
        status, _, payload, dropped = answer
        version = headers.get("stripe-version")
        if dropped:
            return answer
        if status == 200 and (version is None or version < LATEST_CHARGE_VERSION):
            self.skipped += 1
            return answer
        assert self.validator is not None
        self.checked += 1
        found = self.validator.check_answer(method, path, status, json.loads(payload))
        self.broken += bool(found)
        self.violations += found
        return answer

    def assert_clean(self) -> None:
        if self.violations:
            ways = sorted(distinct(self.violations))
            raise AssertionError(f"{self.broken} of the fake's {self.checked} answers break Stripe's "
                                 f"specification in {len(ways)} ways:\n" + "\n".join(ways))


def sleep(seconds: float) -> Deferred:
    return deferLater(reactor, seconds, lambda: None)


class SendRecorder:
    """A ``before_send`` that records the details it was given and what Stripe had seen by then."""

    def __init__(self, fake: FakeStripe, result: Optional[Deferred] = None) -> None:
        self.calls: list[dict] = []
        self.requests_before: list[list[str]] = []
        self._fake = fake
        self._result = result

    def __call__(self, details: Optional[dict] = None) -> Deferred:
        self.calls.append(dict(details or {}))
        self.requests_before.append([r.path for r in self._fake.requests])
        return self._result if self._result is not None else succeed(None)


class StripeTestCase(TestCase):
    timeout = 15

    @inlineCallbacks
    def setUp(self):
        self.fake = FakeStripe(reactor)
        self.answers = AnswerChecker(self.fake)
        self.addCleanup(self.answers.assert_clean)
        yield self.fake.listen(reactor)
        self.addCleanup(self.fake.stop)
        self.reader = self.fake.add_reader(SERIAL, label="Till 1")
        self.knobs = self.fake.reader_knobs(self.reader["id"])
        self._count = 0

    def make_api(self, key: str = KEY, **options: Any) -> StripeAPI:
        settings = {"backoff": 0.01, "timeout": 5.0}
        settings.update(options)
        api = StripeAPI(reactor, key, api_base=self.fake.url, **settings)
        self.addCleanup(api.stop)
        return api

    def make_driver(self, key: str = KEY, by_serial: bool = True, **options: Any) -> StripeReaderDriver:
        settings = {"poll_interval": 0.02, "payment_timeout": 1.0, "cancel_grace": 0.5, "status_interval": 0}
        settings.update(options)
        api = self.make_api(key)
        driver = StripeReaderDriver("till-s", reactor, api,
                                    reader_id=None if by_serial else self.reader["id"],
                                    serial_number=SERIAL if by_serial else None, **settings)
        driver.start()
        self.addCleanup(driver.stop)
        return driver

    def request(self, amount: int = 1234, kind: str = DEBIT, original: Optional[dict] = None,
                currency=EUR) -> PaymentRequest:
        self._count += 1
        return PaymentRequest(f"pay_{self._count}_{id(self):x}", kind, amount, currency, original=original)

    def refund_request(self, paid: PaymentRequest, outcome: Any, amount: int) -> PaymentRequest:
        original = {"payment_id": paid.payment_id, "amount": paid.amount, "details": dict(outcome.details)}
        return self.request(amount, REFUND, original)

    def auto_present(self, card: str = "4242424242424242", delay: float = 0.05) -> None:
        self.knobs.auto_present, self.knobs.auto_present_delay = card, delay

    def paths(self, fragment: str = "", method: Optional[str] = None) -> list:
        return [r for r in self.fake.requests if fragment in r.path and (method is None or r.method == method)]

    def intent(self, pi_id: str) -> dict:
        return self.fake.intents[pi_id]

    @inlineCallbacks
    def wait_for(self, predicate, what: str = "condition"):
        for _ in range(400):
            if predicate():
                return
            yield sleep(0.01)
        self.fail(f"timed out waiting for {what}")
