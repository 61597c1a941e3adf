#!/usr/bin/env python3
"""Trim Stripe's OpenAPI specification to the answers the fake Stripe API gives: ``schemas.json`` beside this file.

    python3 tests/data/stripe_openapi/make_schemas.py SPEC [--source TEXT] [--out FILE]

SPEC is Stripe's ``openapi/spec3.json`` or ``openapi/spec3.yaml`` (the latter needs PyYAML), from the MIT-licensed
``stripe/openapi`` repository.  Kept: for each operation the fake serves, the schema of its 200 answer and of its
error answer, and every component schema those reach through ``$ref``.  Dropped: descriptions, titles and the
``x-`` extensions, and the expanded-object alternatives of expandable fields the bridge never expands (such a field
then accepts only its id string, so an object the fake expands by mistake is a violation).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from typing import Any

#: (method, path template) of every route the fake Stripe API serves.
OPERATIONS = [
    ("get", "/v1/terminal/locations"), ("post", "/v1/terminal/locations"),
    ("get", "/v1/terminal/locations/{location}"), ("post", "/v1/terminal/locations/{location}"),
    ("delete", "/v1/terminal/locations/{location}"),
    ("get", "/v1/terminal/readers"), ("post", "/v1/terminal/readers"),
    ("get", "/v1/terminal/readers/{reader}"), ("post", "/v1/terminal/readers/{reader}"),
    ("delete", "/v1/terminal/readers/{reader}"),
    ("post", "/v1/terminal/readers/{reader}/process_payment_intent"),
    ("post", "/v1/terminal/readers/{reader}/cancel_action"),
    ("post", "/v1/terminal/readers/{reader}/set_reader_display"),
    ("post", "/v1/test_helpers/terminal/readers/{reader}/present_payment_method"),
    ("post", "/v1/terminal/connection_tokens"),
    ("get", "/v1/payment_intents"), ("post", "/v1/payment_intents"),
    ("get", "/v1/payment_intents/{intent}"), ("post", "/v1/payment_intents/{intent}"),
    ("post", "/v1/payment_intents/{intent}/capture"), ("post", "/v1/payment_intents/{intent}/cancel"),
    ("get", "/v1/refunds"), ("post", "/v1/refunds"), ("get", "/v1/refunds/{refund}"),
]

#: Expandable fields the bridge expands (``expand[]``): their expanded-object alternative is kept.
EXPANDED = {("payment_intent", "latest_charge"),
            ("terminal_reader_reader_resource_process_payment_intent_action", "payment_intent")}

_REF = "#/components/schemas/"


def load(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        if path.endswith((".yaml", ".yml")):
            import yaml

            loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
            return yaml.load(f, Loader=loader)
        return json.load(f)


def _strip(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip(v) for k, v in node.items()
                if k not in ("description", "title") and not k.startswith("x-")}
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def _refs(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            found.add(node["$ref"][len(_REF):])
        for value in node.values():
            _refs(value, found)
    elif isinstance(node, list):
        for value in node:
            _refs(value, found)


def _component(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    schema = copy.deepcopy(schema)
    for prop, spec in (schema.get("properties") or {}).items():
        if "x-expansionResources" in spec and (name, prop) not in EXPANDED:
            spec["anyOf"] = [alt for alt in spec["anyOf"] if "$ref" not in alt]
    return _strip(schema)


def trim(spec: dict[str, Any], source: str) -> dict[str, Any]:
    components = spec["components"]["schemas"]
    operations: dict[str, dict[str, Any]] = {}
    todo: set[str] = set()
    for method, template in OPERATIONS:
        responses = spec["paths"][template][method]["responses"]
        answers = {}
        for status in ("200", "default"):
            answers[status] = _strip(responses[status]["content"]["application/json"]["schema"])
            _refs(answers[status], todo)
        operations[f"{method.upper()} {template}"] = answers
    schemas: dict[str, Any] = {}
    while todo:
        name = todo.pop()
        if name in schemas:
            continue
        schemas[name] = _component(name, components[name])
        found: set[str] = set()
        _refs(schemas[name], found)
        todo |= found - set(schemas)
    return {"source": source, "api_version": spec["info"]["version"], "openapi": spec.get("openapi"),
            "operations": operations, "schemas": dict(sorted(schemas.items()))}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", help="Stripe's spec3.json or spec3.yaml")
    parser.add_argument("--source", default=None, help="where SPEC came from (repository, commit), for the record")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "schemas.json"))
    args = parser.parse_args(argv)
    trimmed = trim(load(args.spec), args.source or os.path.basename(args.spec))
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(trimmed, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"{args.out}: API version {trimmed['api_version']}, {len(trimmed['operations'])} operations, "
          f"{len(trimmed['schemas'])} schemas, {os.path.getsize(args.out)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
