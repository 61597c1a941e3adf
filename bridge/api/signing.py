"""HMAC signatures over canonical JSON, with separate inbound and outbound secrets (Ogone's SHA-IN/SHA-OUT).

The signed bytes are the message without its ``sig`` member, serialised as JSON with object keys sorted by
code point at every level, no insignificant white space, non-ASCII characters left as UTF-8 (not escaped), and
encoded as UTF-8.  docs/protocol.md shows the same rule with worked examples for client authors.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from typing import Any, Mapping

ALGORITHMS = {"sha256": hashlib.sha256, "sha512": hashlib.sha512}
DEFAULT_ALGORITHM = "sha256"
#: Refused outright: too weak for new signatures (SHA-1 stays only in Ogone-compatible feedback, if ever).
REFUSED_ALGORITHMS = frozenset({"sha1", "md5"})
MIN_SECRET_BYTES = 32


def canonical(message: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers: the message minus ``sig``, as canonical JSON."""
    unsigned = {k: v for k, v in message.items() if k != "sig"}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def sign(message: Mapping[str, Any], secret: str, algorithm: str = DEFAULT_ALGORITHM) -> str:
    """Hex HMAC of :func:`canonical` with ``secret`` (its UTF-8 bytes are the key)."""
    return hmac.new(secret.encode("utf-8"), canonical(message), ALGORITHMS[algorithm]).hexdigest()


def signed(message: dict[str, Any], secret: str, algorithm: str = DEFAULT_ALGORITHM) -> dict[str, Any]:
    message = dict(message)
    message["sig"] = sign(message, secret, algorithm)
    return message


def signed_bytes(message: Mapping[str, Any], secret: str, algorithm: str = DEFAULT_ALGORITHM) -> bytes:
    """The signed message serialised, for sending: its canonical form with ``sig`` added last."""
    body = canonical(message)
    sig = hmac.new(secret.encode("utf-8"), body, ALGORITHMS[algorithm]).hexdigest()
    if body == b"{}":
        return b'{"sig":"' + sig.encode() + b'"}'
    return body[:-1] + b',"sig":"' + sig.encode() + b'"}'


def verify(message: Mapping[str, Any], secret: str, algorithm: str = DEFAULT_ALGORITHM) -> bool:
    received = message.get("sig")
    if not isinstance(received, str):
        return False
    try:
        expected = sign(message, secret, algorithm)
    except (TypeError, ValueError):
        return False
    return hmac.compare_digest(received.lower(), expected)


def new_secret() -> str:
    """A random secret of 32 bytes, as 64 hex characters."""
    return secrets.token_hex(MIN_SECRET_BYTES)
