"""The status page's service: its own HTTPS listener (the bridge's certificate), the metrics, the sessions.

A port of its own, not the command listener's: the command listener stays a pure WebSocket, and the page can
be bound to the shop's LAN only (docs/operations.md).  The cloud uplink only dials out and never reaches it.
"""

from __future__ import annotations

from typing import Any, Optional, cast

from twisted.internet.defer import Deferred, fail, inlineCallbacks
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from bridge.api.tls import server_options
from bridge.core.connections import OpenConnections
from bridge.core.journal import Event
from bridge.core.payments import iso
from bridge.core.reactor_types import Reactor
from bridge.status import auth, facts
from bridge.status.metrics import Metrics
from bridge.status.server import QuietSite, StatusResource



#: The page's facts are read at most once a second, however many browsers refresh it.
VIEW_CACHE_SECONDS = 1.0


class StatusService:
    """Started and stopped by the daemon when ``[status]`` is enabled."""

    log = Logger()

    def __init__(self, daemon: Any, reactor: Reactor) -> None:
        assert daemon.config.status is not None
        self.daemon = daemon
        self.config = daemon.config
        self.status_config = daemon.config.status
        self.reactor = reactor
        self.gate = auth.Gate(reactor)
        self.metrics = Metrics(daemon, reactor)
        self.port: Any = None
        self.connections: Optional[OpenConnections] = None
        # scrypt takes tens of milliseconds: off the reactor, one at a time.
        self._pool = ThreadPool(minthreads=0, maxthreads=1, name="status-page-login")
        self._checking = False
        # Today's payments by id -> state: read from the journal once a day, then kept by the events (a page
        # refreshing every few seconds must not read a whole day's payments each time).
        self._today_since: Optional[float] = None
        self._today_iso = ""
        self._today: dict[str, str] = {}
        self._view: tuple[float, dict[str, Any]] = (float("-inf"), {})

    @inlineCallbacks
    def start(self):
        payments = self.daemon.payments
        payments.subscribe(self.metrics.on_event)
        payments.subscribe(self._count_today)
        payments.journal.watch_commits(self.metrics.commits)
        self.daemon.bridge.on_refused = self.metrics.on_refused
        self._pool.start()
        config = self.status_config
        endpoint = SSL4ServerEndpoint(self.reactor, config.listen_port,
                                      server_options(self.config.tls_certificate, self.config.tls_key),
                                      interface=config.listen_host)
        try:
            self.connections = OpenConnections(QuietSite(StatusResource(self)))
            self.port = yield endpoint.listen(self.connections)
        except Exception:
            self._stop_watching()
            raise
        address = self.port.getHost()
        self.log.info("Status page on https://{host}:{port}/ (metrics at /metrics)", host=address.host,
                      port=address.port)
        return self.port

    @inlineCallbacks
    def stop(self):
        self._stop_watching()
        if self.port is not None:
            yield self.port.stopListening()
            self.port = None
        if self.connections is not None:
            yield self.connections.close_all()

    def _stop_watching(self) -> None:
        self.daemon.payments.unsubscribe(self.metrics.on_event)
        self.daemon.payments.unsubscribe(self._count_today)
        self.daemon.payments.journal.watch_commits(lambda seconds: None)
        self.daemon.bridge.on_refused = lambda code: None
        if self._pool.started:
            self._pool.stop()

    # -- what the page shows ----------------------------------------------------------------------

    def view(self) -> dict[str, Any]:
        """What the page shows; read again once VIEW_CACHE_SECONDS old (or after a resolve)."""
        now = self.reactor.seconds()
        if not 0 <= now - self._view[0] < VIEW_CACHE_SECONDS:
            self._view = (now, self._read_view(now))
        return self._view[1]

    def _read_view(self, now: float) -> dict[str, Any]:
        daemon = self.daemon
        journal = daemon.payments.journal
        since = facts.midnight(now)
        if since != self._today_since:
            self._today_since, self._today_iso = since, iso(since)
            self._today = facts.payments_since(journal, since)
        today: dict[str, int] = {}
        for state in self._today.values():
            today[state] = today.get(state, 0) + 1
        unknown = facts.unknown_payments(journal)
        return {
            "bridge": self.config.name, "now": now, "started": self.metrics.started,
            "fingerprint": daemon.fingerprint, "certificate": self.metrics.certificate(now),
            "clients": len(daemon.bridge.connected), "terminals": facts.terminal_facts(daemon),
            "uplinks": facts.uplink_facts(daemon, now), "unknown": unknown.oldest, "unknown_count": unknown.total,
            "journal": facts.journal_facts(journal, self.metrics.commits), "today": today,
        }

    def _count_today(self, event: Event) -> None:
        payment = event.body.get("payment") or {}
        # ISO times in UTC with milliseconds compare as text
        if self._today_since is not None and str(payment.get("created", "")) >= self._today_iso:
            self._today[payment["id"]] = payment["state"]

    # -- signing in -------------------------------------------------------------------------------

    def password_problem(self) -> str:
        return ("No status page password is set yet. On the bridge, run: terminal-bridge status-page password")

    def check_password(self, password: str) -> Optional[Deferred]:
        """A Deferred firing True/False; None when no password is set; failing when a check is already running."""
        stored = auth.read_password_file(self.status_config.password_file)
        if stored is None:
            return None
        if self._checking:
            return fail(RuntimeError("busy"))
        self._checking = True

        def done(result: Any) -> Any:
            self._checking = False
            return result

        return deferToThreadPool(cast(IReactorFromThreads, self.reactor), self._pool, auth.check_password, password,
                                 stored).addBoth(done)

    # -- resolving --------------------------------------------------------------------------------

    def resolve(self, payment_id: str, outcome: str, operator: str, note: str, authorisation: str) -> Deferred:
        """Exactly what ``payment.resolve`` does for `terminal-bridge resolve`, with the operator as the actor."""
        details = {"authorisation": authorisation[:32]} if authorisation else {}
        actor = f"status page: {operator}"
        self.log.info("Status page: {operator} resolves payment {payment_id} as {outcome}", operator=operator,
                      payment_id=payment_id, outcome=outcome)
        d = self.daemon.payments.resolve(payment_id, outcome, actor=actor, note=note, details=details)

        def resolved(payment: dict[str, Any]) -> dict[str, Any]:
            self._view = (float("-inf"), {})  # the page that follows shows the decision
            return payment

        return d.addCallback(resolved)
