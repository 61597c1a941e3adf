"""Who may see the status page: one password (stored as an scrypt hash), sessions, CSRF tokens, lock-out.

The password is set with `terminal-bridge status-page password` and read from its file at each login, so a
new password works at once.  Sessions live in memory only: a restart logs everybody out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass, field
from typing import Optional

from bridge.core.reactor_types import Clock

#: scrypt's cost: 16 MiB of memory and about 50 ms on a Raspberry Pi 4 per try.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 14, 8, 1
MIN_PASSWORD_LENGTH = 10
#: Wrong passwords from one address before it is locked out, and for how long.
MAX_FAILURES = 5
LOCKOUT_SECONDS = 15 * 60
#: A session ends after this long without a request, and in any case after MAX_SESSION_SECONDS.
IDLE_SECONDS = 60 * 60
MAX_SESSION_SECONDS = 12 * 60 * 60
MAX_SESSIONS = 64


def hash_password(password: str, salt: Optional[bytes] = None) -> str:
    """``scrypt$N$r$p$salt$hash`` (base64), the line the password file holds."""
    salt = salt if salt is not None else os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return "$".join(("scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P),
                     base64.b64encode(salt).decode(), base64.b64encode(digest).decode()))


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.strip().split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


def write_password_file(path: str, password: str, owner: Optional[tuple[int, int]] = None) -> None:
    """Store the password's hash in ``path``, mode 0600 (owned by ``owner`` if given), atomically."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o750, exist_ok=True)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(hash_password(password) + "\n")
        f.flush()
        os.fsync(f.fileno())
    if owner is not None:
        os.chown(tmp, *owner)
    os.replace(tmp, path)


def read_password_file(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or None
    except OSError:
        return None


@dataclass
class Session:
    token: str
    csrf: str
    created: float
    seen: float
    #: A one-time message for the next page (kind "ok" or "error", words).
    flash: Optional[tuple[str, str]] = None


@dataclass
class _Failures:
    count: int = 0
    locked_until: float = 0.0


@dataclass
class Gate:
    """Sessions and lock-outs, timed by ``clock``."""

    clock: Clock
    sessions: dict[str, Session] = field(default_factory=dict)
    failures: dict[str, _Failures] = field(default_factory=dict)

    def locked_for(self, address: str) -> float:
        """Seconds ``address`` must still wait before trying a password again (0: it may try)."""
        entry = self.failures.get(address)
        if entry is None:
            return 0.0
        return max(0.0, entry.locked_until - self.clock.seconds())

    def failed(self, address: str) -> None:
        now = self.clock.seconds()
        entry = self.failures.setdefault(address, _Failures())
        if entry.locked_until and entry.locked_until <= now:
            entry.count = 0
            entry.locked_until = 0.0
        entry.count += 1
        if entry.count >= MAX_FAILURES:
            entry.locked_until = now + LOCKOUT_SECONDS
        if len(self.failures) > 1024:  # forget the oldest addresses rather than grow without end
            for key in list(self.failures)[:512]:
                del self.failures[key]

    def open_session(self, address: str) -> Session:
        self.failures.pop(address, None)
        now = self.clock.seconds()
        self._expire(now)
        if len(self.sessions) >= MAX_SESSIONS:
            oldest = min(self.sessions.values(), key=lambda s: s.seen)
            del self.sessions[oldest.token]
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), now, now)
        self.sessions[session.token] = session
        return session

    def session(self, token: Optional[str]) -> Optional[Session]:
        if not token:
            return None
        now = self.clock.seconds()
        self._expire(now)
        session = self.sessions.get(token)
        if session is not None:
            session.seen = now
        return session

    def close_session(self, token: Optional[str]) -> None:
        if token:
            self.sessions.pop(token, None)

    def _expire(self, now: float) -> None:
        for token, s in list(self.sessions.items()):
            if now - s.seen > IDLE_SECONDS or now - s.created >= MAX_SESSION_SECONDS:
                del self.sessions[token]


def csrf_ok(session: Session, given: Optional[str]) -> bool:
    return bool(given) and hmac.compare_digest(session.csrf.encode(), str(given).encode())
