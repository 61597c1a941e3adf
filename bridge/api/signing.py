"""HMAC signatures over canonical JSON, with separate inbound and outbound secrets (Ogone's SHA-IN/SHA-OUT).

The signed bytes are the message without its ``sig`` member, serialised as JSON with object keys sorted by
code point at every level, no insignificant white space, non-ASCII characters left as UTF-8 (not escaped), and
encoded as UTF-8.  docs/protocol.md shows the same rule with worked examples for client authors.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any, Mapping

from bridge.core.journal import canonical_json

ALGORITHMS = {"sha256": hashlib.sha256, "sha512": hashlib.sha512}
DEFAULT_ALGORITHM = "sha256"
#: Refused outright: too weak for new signatures (SHA-1 stays only in Ogone-compatible feedback, if ever).
REFUSED_ALGORITHMS = frozenset({"sha1", "md5"})
MIN_SECRET_BYTES = 32


def canonical(message: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers: the message minus ``sig``, as canonical JSON."""
    if "sig" in message or not isinstance(message, dict):
        message = {k: v for k, v in message.items() if k != "sig"}
    return canonical_json(message).encode("utf-8")


def _hex_hmac(secret: str, body: bytes, algorithm: str) -> str:
    # hmac.digest: OpenSSL's one-shot HMAC, without building an HMAC object (two per message otherwise)
    return hmac.digest(secret.encode("utf-8"), body, ALGORITHMS[algorithm]).hex()


def sign(message: Mapping[str, Any], secret: str, algorithm: str = DEFAULT_ALGORITHM) -> str:
    """Hex HMAC of :func:`canonical` with ``secret`` (its UTF-8 bytes are the key)."""
    return _hex_hmac(secret, canonical(message), algorithm)


def signed(message: dict[str, Any], secret: str, algorithm: str = DEFAULT_ALGORITHM) -> dict[str, Any]:
    message = dict(message)
    message["sig"] = sign(message, secret, algorithm)
    return message


def signed_bytes(message: Mapping[str, Any], secret: str, algorithm: str = DEFAULT_ALGORITHM) -> bytes:
    """The signed message serialised, for sending: its canonical form with ``sig`` added last."""
    return sign_canonical(canonical(message), secret, algorithm)


def sign_canonical(body: bytes, secret: str, algorithm: str = DEFAULT_ALGORITHM) -> bytes:
    """:func:`signed_bytes` of a message already in its canonical form ``body`` (an object without ``sig``)."""
    sig = _hex_hmac(secret, body, algorithm)
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
