"""Prometheus metrics (prometheus_client): counted from the payment service's events, the rest read at scrape.

Every name starts with ``terminal_bridge_``; docs/operations.md lists them with example alert rules.
"""

from __future__ import annotations

import time
from typing import Any, Iterator, Optional

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from bridge import __version__
from bridge.core.journal import Event
from bridge.core.reactor_types import Clock
from bridge.status import facts

#: The certificate file is read again at most this often (a new certificate needs a restart anyway).
CERTIFICATE_CACHE_SECONDS = 300.0

#: A terminal's answer takes seconds (a cardholder types a PIN); Caisse-AP waits up to a few minutes.
ANSWER_BUCKETS = (0.5, 1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300)
#: What the bridge adds around the terminal: journal writes and the connection to the terminal.
ADDED_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
#: One COMMIT with its fsync: well under a millisecond on an SSD, tens of milliseconds on a slow SD card.
COMMIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class Metrics:
    """The bridge's metrics.  ``on_event`` is a PaymentService listener; ``commits`` goes to the journal."""

    def __init__(self, daemon: Any, clock: Clock, started: Optional[float] = None) -> None:
        self._daemon = daemon
        self._clock = clock
        self.started = started if started is not None else clock.seconds()
        self.registry = CollectorRegistry(auto_describe=False)
        self.payments = Counter("terminal_bridge_payments", "Payments (and refunds) that reached a final state, "
                                "by terminal, kind (debit or refund) and final state.",
                                ["terminal", "kind", "state"], registry=self.registry)
        self.resolved = Counter("terminal_bridge_resolutions", "Unknown payments settled by a person, by terminal "
                                "and the outcome they recorded.", ["terminal", "state"], registry=self.registry)
        self.refused = Counter("terminal_bridge_commands_refused", "Commands refused, by error code "
                               "(docs/protocol.md, Error codes), from the LAN and the uplinks.", ["code"],
                               registry=self.registry)
        self.answer = Histogram("terminal_bridge_terminal_answer_seconds", "Time from the request leaving the "
                                "bridge to the terminal's answer.", ["terminal"], buckets=ANSWER_BUCKETS,
                                registry=self.registry)
        self.added = Histogram("terminal_bridge_added_seconds", "Time the bridge adds to a payment that reached "
                               "the terminal: from taking it to telling its end, less the terminal's answer time.",
                               ["terminal"], buckets=ADDED_BUCKETS, registry=self.registry)
        self.commit = Histogram("terminal_bridge_journal_commit_seconds", "Time of one journal commit, its fsync "
                                "included.", buckets=COMMIT_BUCKETS, registry=self.registry)
        self.commits = facts.CommitWatch(self.commit.observe)
        self.registry.register(_LiveFacts(self))
        self._certificate: tuple[float, dict[str, Any]] = (float("-inf"), {})

    def on_refused(self, code: str) -> None:
        self.refused.labels(code=code).inc()

    def certificate(self, now: float) -> dict[str, Any]:
        """The certificate's facts, read from its file at most every CERTIFICATE_CACHE_SECONDS."""
        if now - self._certificate[0] > CERTIFICATE_CACHE_SECONDS:
            self._certificate = (now, facts.certificate_facts(self._daemon.config.tls_certificate))
        return self._certificate[1]

    def on_event(self, event: Event) -> None:
        payment = event.body.get("payment")
        if not isinstance(payment, dict):
            return
        payment_id, state = str(payment.get("id")), payment.get("state")
        if not payment.get("final"):
            return
        sent = self._daemon.payments.sent_at(payment_id)  # when the driver was let send the request
        terminal = str(payment.get("terminal"))
        if (payment.get("reason") or {}).get("code") == "resolved":
            self.resolved.labels(terminal, state).inc()
            return
        self.payments.labels(terminal, str(payment.get("kind")), state).inc()
        record = self._daemon.payments.journal.get(payment_id)
        if record is None:
            return
        if sent is None:  # never reached the terminal (unreachable, cancelled before sending): no answer to time
            return
        answer = max(0.0, record.updated - sent)
        self.answer.labels(terminal).observe(answer)
        self.added.labels(terminal).observe(max(0.0, self._clock.seconds() - record.created - answer))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _LiveFacts(Collector):
    """The gauges, read from the bridge's parts when Prometheus scrapes."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        metrics = self._metrics
        daemon = metrics._daemon
        now = time.time()
        journal = daemon.payments.journal

        info = GaugeMetricFamily("terminal_bridge_info", "The bridge's name and version (always 1).",
                                 labels=["bridge", "version"])
        info.add_metric([daemon.config.name, __version__], 1)
        yield info
        yield GaugeMetricFamily("terminal_bridge_start_time_seconds", "When the bridge started (Unix time).",
                                value=metrics.started)

        up = GaugeMetricFamily("terminal_bridge_terminal_up", "1 when the terminal can take a payment, 0 when it "
                               "is unreachable, disconnected or offline.", labels=["terminal", "type"])
        busy = GaugeMetricFamily("terminal_bridge_terminal_busy", "1 while the terminal runs a payment.",
                                 labels=["terminal"])
        registry = daemon.payments.registry
        for name in registry.names():
            status = registry.status(name)
            up.add_metric([name, str(status.get("type"))], 1 if facts.terminal_is_up(status) else 0)
            busy.add_metric([name], 1 if status.get("payment") else 0)
        yield up
        yield busy

        yield GaugeMetricFamily("terminal_bridge_clients_connected", "Clients connected to the command listener "
                                "(after hello).", value=len(daemon.bridge.connected))

        awaiting = facts.unknown_payments(journal)
        unknown = awaiting.oldest
        yield GaugeMetricFamily("terminal_bridge_unknown_payments", "Payments in state unknown awaiting a "
                                "person's decision.", value=awaiting.total)
        yield GaugeMetricFamily("terminal_bridge_unknown_oldest_age_seconds", "How long the oldest unknown "
                                "payment has waited for a decision (0 when none).",
                                value=max(0.0, now - min(r.updated for r in unknown)) if unknown else 0.0)

        connected = GaugeMetricFamily("terminal_bridge_uplink_connected", "1 when the uplink reaches its cloud "
                                      "(bus or command fetch).", labels=["uplink"])
        waiting = GaugeMetricFamily("terminal_bridge_feedback_waiting", "Final states waiting to be delivered "
                                    "to the uplink's feedback URL.", labels=["uplink"])
        age = GaugeMetricFamily("terminal_bridge_feedback_oldest_age_seconds", "Age of the oldest final state "
                                "waiting for delivery (0 when none).", labels=["uplink"])
        for uplink in facts.uplink_facts(daemon, now):
            connected.add_metric([uplink["name"]], 1 if uplink["connected"] else 0)
            waiting.add_metric([uplink["name"]], uplink["feedback_waiting"])
            age.add_metric([uplink["name"]], max(0.0, uplink["feedback_oldest_age"] or 0.0))
        yield connected
        yield waiting
        yield age

        journal_facts = facts.journal_facts(journal, metrics.commits)
        yield GaugeMetricFamily("terminal_bridge_journal_size_bytes", "The journal's size on disk (with its "
                                "write-ahead log).", value=journal_facts["size"])
        if journal_facts["free"] is not None:
            yield GaugeMetricFamily("terminal_bridge_journal_disk_free_bytes", "Free space on the journal's disk.",
                                    value=journal_facts["free"])
        yield GaugeMetricFamily("terminal_bridge_journal_writable", "1 when the journal can be written (0: the "
                                "disk went read-only; payments are refused).", value=1 if journal.writable else 0)
        if journal_facts["last_commit_at"] is not None:
            yield GaugeMetricFamily("terminal_bridge_journal_last_commit_time_seconds", "When the journal last "
                                    "committed (Unix time).", value=journal_facts["last_commit_at"])

        cert = metrics.certificate(now)
        if cert["not_after"] is not None:
            yield GaugeMetricFamily("terminal_bridge_certificate_expiry_time_seconds", "When the bridge's TLS "
                                    "certificate ends (Unix time).", value=cert["not_after"])
