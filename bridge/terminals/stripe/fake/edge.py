"""One request as Stripe's edge takes it, before the fake's routes see it: recorded, failed on purpose when a test
asked for it (``fail_next``, ``fail_inside``, ``drop_next``), authenticated, and answered again from its
idempotency key when it is a retry."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from bridge.terminals.stripe.fake.wire import ApiError, decode_form, rand, to_json

if TYPE_CHECKING:
    from bridge.terminals.stripe.fake.model import FakeStripe


@dataclass
class Recorded:
    method: str
    path: str
    params: dict[str, Any]
    idempotency_key: Optional[str]
    stripe_version: Optional[str]
    authorization: Optional[str]


@dataclass
class Stored:
    """An answer kept under its idempotency key (24 hours, as Stripe keeps them)."""

    method: str
    path: str
    params: Any
    status: int = 0
    body: bytes = b""
    request_id: str = ""
    created: float = 0.0
    in_flight: bool = True


def handle(fake, method: str, path: str, headers: dict[str, Optional[str]], body: bytes,
           query: str) -> tuple[int, dict[str, str], bytes, bool]:
    """One request -> (status, extra headers, body, drop the connection instead of answering)."""
    text = body.decode("utf-8", "replace") if method == "POST" else query
    try:
        params = decode_form(text)
    except ValueError:
        params = {}
    key_header = headers.get("idempotency-key")
    version = headers.get("stripe-version")
    fake.requests.append(Recorded(method, path, params, key_header, version, headers.get("authorization")))
    request_id = "req_" + rand(14)
    out_headers = {"Request-Id": request_id}
    drop = False
    for failure in list(fake.failures):
        if failure.match is None or failure.match in path:
            failure.count -= 1
            if failure.count <= 0:
                fake.failures.remove(failure)
            if failure.drop:
                drop = True
                break
            if failure.status == 429:
                error = ApiError(429, "Too many requests hit the API too quickly.", "rate_limit",
                                 stored=False)
            else:
                error = ApiError(failure.status, "An unknown error occurred", None, type="api_error",
                                 stored=False)
                out_headers["Stripe-Should-Retry"] = "true"
            return failure.status, out_headers, to_json({"error": error.body}), False
    try:
        api_key = authenticate(fake, headers.get("authorization"))
    except ApiError as error:
        return error.status, out_headers, to_json({"error": error.body}), False
    livemode = "_live_" in api_key
    stored: Optional[Stored] = None
    fake.last_stored = None
    if method == "POST" and key_header:
        scope = (api_key, key_header)
        stored = fake.idempotency.get(scope)
        if stored is not None and fake.clock.seconds() - stored.created > 24 * 3600:
            del fake.idempotency[scope]
            stored = None
        if stored is not None:
            if stored.in_flight:
                refusal = ApiError(409, "There is currently another in-progress request using this Idempotent "
                                      "Key (that probably means you submitted twice, and the other request "
                                      "is still going through).", "idempotency_key_in_use",
                                 type="idempotency_error", stored=False)
                return 409, out_headers, to_json({"error": refusal.body}), False
            if (stored.method, stored.path, stored.params) != (method, path, params):
                refusal = ApiError(400, "Keys for idempotent requests can only be used with the same "
                                      "parameters they were first used with. Try using a key other than "
                                      f"'{key_header}' if you meant to execute a different request.",
                                 type="idempotency_error", stored=False)
                return 400, out_headers, to_json({"error": refusal.body}), False
            out_headers.update({"Idempotent-Replayed": "true", "Original-Request": stored.request_id})
            return stored.status, out_headers, stored.body, drop
        stored = Stored(method, path, params, request_id=request_id, created=fake.clock.seconds())
    try:
        inside = fake.failing_inside(path)
        if inside is not None and inside.drop:  # the change is made, then the endpoint fails
            fake.route(method, path, params, version, livemode)
        if inside is not None:
            raise ApiError(inside.status, "An unknown error occurred", type="api_error")
        status, answer = 200, fake.route(method, path, params, version, livemode)
        payload = to_json(answer)
    except ApiError as error:
        status, payload = error.status, to_json({"error": error.body})
        if not error.stored:
            stored = None
    if stored is not None:
        # With slow answers, a duplicate arriving before this one is answered is "in flight" (409).
        stored.status, stored.body, stored.in_flight = status, payload, fake.slow > 0
        fake.idempotency[(api_key, key_header or "")] = stored
        fake.last_stored = stored
    return status, out_headers, payload, drop

def authenticate(fake: "FakeStripe", header: Optional[str]) -> str:
    """The API key of a request (Bearer or Basic), or the 401/403 Stripe answers."""
    key = None
    if header and header.startswith("Bearer "):
        key = header[7:].strip()
    elif header and header.startswith("Basic "):
        try:
            key = base64.b64decode(header[6:]).decode().partition(":")[0]
        except (ValueError, UnicodeDecodeError):
            key = None
    if not key:
        raise ApiError(401, "You did not provide an API key. You need to provide your API key in the "
                            "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                            "YOUR_SECRET_KEY').", stored=False)
    prefixes = ("sk_test_", "rk_test_") + (("sk_live_", "rk_live_") if fake.livemode_keys else ())
    if (fake.keys is not None and key not in fake.keys) or not key.startswith(prefixes):
        raise ApiError(401, f"Invalid API Key provided: {key[:8]}{'*' * 8}{key[-4:]}", stored=False)
    if key in fake.forbidden_keys:
        raise ApiError(403, f"The provided key '{key[:8]}***{key[-4:]}' does not have the required "
                            "permissions for this endpoint on account 'acct_fake'.", stored=False,
                       type="invalid_request_error")
    return key
