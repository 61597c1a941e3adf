"""What the status page and the metrics show, read from the running bridge's parts through their read methods.

Nothing here writes or changes anything: terminals through the registry's ``status()``, payments through the
journal's reads, uplinks through their status, the journal's file through the file system.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime, timezone
from typing import Any, NamedTuple, Optional

from bridge.core import states
from bridge.core.journal import Journal, PaymentRecord
from bridge.service.daemon import terminal_is_up

#: Past this many final events waiting, the feedback backlog is shown as "at least" this many.
BACKLOG_SCAN_LIMIT = 10000
#: Unknown payments shown (the oldest first); more are counted, not listed.
UNKNOWN_LIMIT = 50
#: The payments shown under each terminal.
RECENT_PER_TERMINAL = 3


class CommitWatch:
    """Told by the journal's writer thread how long each commit took; keeps when the last one ended."""

    def __init__(self, observe: Any = None, now: Any = time.time) -> None:
        self._observe = observe
        self._now = now
        self._lock = threading.Lock()
        self.last_at: Optional[float] = None
        self.last_seconds: Optional[float] = None

    def __call__(self, seconds: float) -> None:
        with self._lock:
            self.last_at, self.last_seconds = self._now(), seconds
        if self._observe is not None:
            self._observe(seconds)


def terminal_facts(daemon: Any) -> list[dict[str, Any]]:
    """Each terminal: its driver's status (``up`` as the driver says it: :class:`~bridge.core.contract.TerminalStatus`),
    its last payments, its last link problem in words."""
    registry, journal = daemon.payments.registry, daemon.payments.journal
    result = []
    for name in registry.names():
        status = dict(registry.status(name))
        recent = journal.list(terminal=name, limit=RECENT_PER_TERMINAL)
        status["recent"] = recent
        status["problem"] = _problem_words(status, recent)
        status["last_seen"] = status.get("last_seen") or _last_answer(recent)
        result.append(status)
    return result


def _problem_words(status: dict[str, Any], recent: list[PaymentRecord]) -> Optional[str]:
    """The driver keeps the last link problem as a code; the payment it ended says it in words (kept under
    ``resolved_from`` once a person resolved that payment)."""
    code = status.get("last_error")
    if not code:
        return status.get("detail") if not terminal_is_up(status) else None
    for record in recent:
        if record.reason_code == code and record.reason_message:
            return record.reason_message
        earlier = record.details.get("resolved_from") or {}
        if isinstance(earlier, dict) and earlier.get("code") == code and earlier.get("message"):
            return str(earlier["message"])
    return str(code).replace("_", " ")


def _last_answer(recent: list[PaymentRecord]) -> Optional[float]:
    """When the terminal last answered a payment (approved, declined or cancelled on it)."""
    for record in recent:
        if record.state in (states.APPROVED, states.DECLINED, states.CANCELLED) and record.reason_code != "resolved":
            return record.updated
    return None


def uplink_facts(daemon: Any, now: float) -> list[dict[str, Any]]:
    """Each uplink: connected or not, the fetch and when it last worked, feedback waiting and the age of the
    oldest, last error."""
    if daemon.uplinks is None:
        return []
    journal = daemon.payments.journal
    result = []
    for service in daemon.uplinks.services:
        data = service.status.data
        waiting, oldest = feedback_backlog(journal, service.client.id, service.uplink.cursor_id)
        result.append({
            "name": service.uplink.name, "target": service.uplink.url or service.uplink.feedback_target,
            "connected": bool(data.get("bus") or data.get("https")), "bus": data.get("bus"),
            "bus_since": data.get("bus_since"), "https": data.get("https"), "https_since": data.get("https_since"),
            "fetched_at": data.get("fetched_at"),
            "last_error": data.get("last_error"), "last_error_at": data.get("last_error_at"),
            "feedback_error": data.get("feedback_error"), "feedback_waiting": waiting,
            "feedback_oldest_age": (now - oldest) if oldest is not None else None,
        })
    return result


def feedback_backlog(journal: Journal, client_id: str, cursor_id: str) -> tuple[int, Optional[float]]:
    """How many final states wait for delivery, and when the oldest of them happened (Unix time)."""
    count, oldest = 0, None
    for event in journal.events_after(client_id, journal.acked(cursor_id), limit=BACKLOG_SCAN_LIMIT):
        payment = event.body.get("payment") or {}
        if payment.get("final"):
            count += 1
            if oldest is None:
                oldest = _parse_iso(payment.get("updated"))
    return count, oldest


class UnknownPayments(NamedTuple):
    """The payments awaiting a person's decision: the ``oldest`` UNKNOWN_LIMIT of them (oldest first) and how
    many wait in all (``total``, which may be more)."""

    oldest: list[PaymentRecord]
    total: int


def unknown_payments(journal: Journal) -> UnknownPayments:
    """The payments awaiting a person's decision: the longest-waiting ones (the page and the metrics' oldest age
    must see them) and how many in all, in two indexed reads whatever the number (the page refreshes and /metrics
    is scraped every few seconds)."""
    oldest = journal.list(state=states.UNKNOWN, limit=UNKNOWN_LIMIT, oldest_first=True)
    total = len(oldest) if len(oldest) < UNKNOWN_LIMIT else journal.count(states.UNKNOWN)
    return UnknownPayments(oldest, total)


def journal_facts(journal: Journal, commits: CommitWatch) -> dict[str, Any]:
    size = 0
    for suffix in ("", "-wal", "-shm"):
        try:
            size += os.path.getsize(journal.path + suffix)
        except OSError:
            pass
    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(journal.path)))
        free: Optional[int] = st.f_bavail * st.f_frsize
    except OSError:
        free = None
    return {"path": journal.path, "size": size, "free": free, "writable": journal.writable,
            "last_commit_at": commits.last_at, "last_commit_seconds": commits.last_seconds}


def midnight(now: float) -> float:
    """Local midnight before ``now``."""
    return datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


def payments_since(journal: Journal, since: float) -> dict[str, str]:
    """Each payment taken since ``since``: its state, by payment id."""
    return {record.id: record.state for record in journal.list(since=since, limit=1_000_000)}


def certificate_facts(path: str) -> dict[str, Any]:
    """The bridge's TLS certificate: its end date (Unix time) and subject, or the error reading it."""
    from cryptography import x509

    try:
        with open(path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
    except (OSError, ValueError) as e:
        return {"error": str(e), "not_after": None}
    not_after = getattr(cert, "not_valid_after_utc", None) or cert.not_valid_after.replace(tzinfo=timezone.utc)
    return {"error": None, "not_after": not_after.timestamp(), "subject": cert.subject.rfc4514_string()}


def _parse_iso(text: Any) -> Optional[float]:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
