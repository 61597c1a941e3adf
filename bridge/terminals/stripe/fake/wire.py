"""Stripe's wire rules as the fake applies them: form-encoded bodies, parameter checks, error bodies."""

from __future__ import annotations

import json
import re
import secrets
from typing import Any, Optional
from urllib.parse import parse_qsl

from bridge.terminals.stripe.fake.reference import DOC, GUIDE


class ApiError(Exception):
    """An error answer.  ``stored``: kept for idempotent replay (False for validation failures)."""

    def __init__(self, status: int, message: str, code: Optional[str] = None, param: Optional[str] = None,
                 type: str = "invalid_request_error", stored: bool = True, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.stored = stored
        self.body: dict[str, Any] = {"type": type, "message": message}
        if code:
            self.body["code"] = code
            self.body["doc_url"] = DOC + code
        if param:
            self.body["param"] = param
        self.body.update(extra)


def missing(name: str) -> ApiError:
    return ApiError(400, f"Missing required param: {name}.", "parameter_missing", name, stored=False)


def no_such(kind: str, object_id: str, param: str = "id") -> ApiError:
    return ApiError(404, f"No such {kind}: '{object_id}'", "resource_missing", param)


def decode_form(text: str) -> dict[str, Any]:
    """``a[b][0]=x&c[]=y&c[]=z`` -> ``{"a": {"b": ["x"]}, "c": ["y", "z"]}`` (values stay strings)."""
    root: dict[str, Any] = {}
    for key, value in parse_qsl(text, keep_blank_values=True):
        head, _, rest = key.partition("[")
        parts = [head] + (re.findall(r"([^\[\]]*)\]", "[" + rest) if rest else [])
        node: Any = root
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if part == "":  # a[] appends
                node.setdefault("\0list", [])
                if last:
                    node["\0list"].append(value)
                    break
                node["\0list"].append({})
                node = node["\0list"][-1]
                continue
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
    return _listify(root)


def _listify(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    if "\0list" in node:
        return [_listify(v) for v in node["\0list"]]
    if node and all(k.isdigit() for k in node):
        return [_listify(node[k]) for k in sorted(node, key=int)]
    return {k: _listify(v) for k, v in node.items()}


def as_bool(value: Any, name: str) -> bool:
    if value in ("true", "True", True):
        return True
    if value in ("false", "False", False):
        return False
    raise ApiError(400, f"Invalid boolean: {value}", "parameter_invalid_boolean", name, stored=False)


def as_int(value: Any, name: str) -> int:
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value):
        return int(value)
    raise ApiError(400, f"Invalid integer: {value}", "parameter_invalid_integer", name, stored=False)


def check_params(params: dict[str, Any], allowed: set[str], required: tuple[str, ...] = ()) -> None:
    for name in params:
        if name not in allowed and name != "expand":
            raise ApiError(400, f"Received unknown parameter: {name}", "parameter_unknown", name, stored=False)
    for name in required:
        if params.get(name) in (None, ""):
            raise missing(name)


def timeout_error() -> ApiError:
    return ApiError(400, "There was a timeout when sending this command to the reader. " + GUIDE,
                    "terminal_reader_timeout")


def raise_(error: Exception) -> Any:
    raise error


def rand(length: int = 16) -> str:
    return secrets.token_hex(length)[:length]


def to_json(data: Any) -> bytes:
    return json.dumps(data).encode()
