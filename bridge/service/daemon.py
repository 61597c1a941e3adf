"""The running bridge: journal, terminals, payment service and the TLS WebSocket listener, wired together."""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Mapping, Optional

from twisted.internet.defer import Deferred, DeferredLock, inlineCallbacks, maybeDeferred
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from bridge.api.session import Bridge
from bridge.api.tls import ensure_certificate, fingerprint_of_pem, server_options
from bridge.api.websocket import CommandFactory
from bridge.config import BridgeConfig, ConfigError, load
from bridge.core.journal import Journal
from bridge.core.payments import PaymentService
from bridge.core.registry import TerminalRegistry
from bridge.errors import BridgeError
from bridge.service.sdnotify import StatusReporter
from bridge.terminals.catalogue import build_driver


#: Seconds ``stop`` gives payments in flight to end: systemd's TimeoutStopSec=190 (systemd/terminal-bridge.service)
#: less 10 s for the drivers, the uplinks and the journal to close.
STOP_GRACE = 180.0
#: How often old payments are pruned from the journal.
PRUNE_INTERVAL = 6 * 3600
#: How often settling the payments a previous run left in flight is tried again while the journal cannot write.
RECOVERY_RETRY = 30
#: How often terminal health is read again for the STATUS= line (it also changes with clients and payments).
STATUS_INTERVAL = 10
#: At most one STATUS= update per this many seconds when clients or payments change.
STATUS_COALESCE = 1.0
#: Driver ``status()`` states that mean the terminal cannot take a payment now.
DOWN_STATES = frozenset({"offline", "unreachable", "disconnected", "down", "error"})


#: ``status()`` keys of drivers that watch their terminal between payments (serial: ``health``, Stripe: ``online``).
LIVE_KEYS = ("health", "online")


def terminal_is_up(status: Mapping[str, Any]) -> bool:
    """Up unless the driver's state says it is down.  A driver that does not watch its terminal between
    payments (TCP) is also down while its last payment met a link problem (``last_error``)."""
    if status.get("state") in DOWN_STATES:
        return False
    return any(key in status for key in LIVE_KEYS) or not status.get("last_error")


def status_line(port: int, terminals: Iterable[Mapping[str, Any]], clients: int) -> str:
    """What ``systemctl status`` shows, e.g.
    "Listening on port 8443; terminals up: 1/2 (down: till-2); clients connected: 1"."""
    terminals = list(terminals)
    down = [str(t.get("name")) for t in terminals if not terminal_is_up(t)]
    text = f"Listening on port {port}; terminals up: {len(terminals) - len(down)}/{len(terminals)}"
    if down:
        text += " (down: " + ", ".join(down[:5]) + (", ..." if len(down) > 5 else "") + ")"
    return f"{text}; clients connected: {clients}"


class Daemon:
    log = Logger()

    def __init__(self, config: BridgeConfig, reactor: Any,
                 notify: Callable[[str], Any] = lambda message: False) -> None:
        self.config = config
        self.reactor = reactor
        self._notify = notify
        self._status = StatusReporter(notify)
        self._status_refresh: Optional[LoopingCall] = None
        self._status_pending: Any = None
        self.bridge: Optional[Bridge] = None
        self.journal: Optional[Journal] = None
        self.payments: Optional[PaymentService] = None
        self.port: Any = None
        self.fingerprint: Optional[str] = None
        self._pruning: Optional[LoopingCall] = None
        self._recovery: Optional[LoopingCall] = None
        self.uplinks: Any = None
        self._reload_lock = DeferredLock()
        self.status_page: Any = None

    @inlineCallbacks
    def start(self):
        """Start everything; fires with the listening port once the bridge serves clients."""
        config = self.config
        os.makedirs(config.state_dir, mode=0o750, exist_ok=True)
        if ensure_certificate(config.tls_certificate, config.tls_key):
            self.log.info("Created a TLS key and self-signed certificate in {path}",
                          path=os.path.dirname(config.tls_certificate))
        with open(config.tls_certificate, "rb") as f:
            self.fingerprint = fingerprint_of_pem(f.read())
        self.log.info("TLS certificate fingerprint (SHA-256): {fingerprint}", fingerprint=self.fingerprint)

        self.journal = Journal.open(config.journal_path, reactor=self.reactor)
        registry = TerminalRegistry(build_driver(t, self.reactor) for t in config.terminals.values())
        self.payments = PaymentService(self.journal, registry, self.reactor)
        if not self.journal.writable:
            self.log.critical("The journal's disk is read-only: payments are refused until it can be written "
                              "again ({path})", path=config.journal_path)
        # Recovery needs to write; on a read-only disk it is retried until it can, while the bridge serves.
        settled = yield self._recover()
        if not settled:
            self._recovery = LoopingCall(self._recover)
            self._recovery.clock = self.reactor
            self._recovery.start(RECOVERY_RETRY, now=False)

        self._pruning = LoopingCall(self._prune)
        self._pruning.clock = self.reactor
        self._pruning.start(PRUNE_INTERVAL, now=True)

        bridge = self.bridge = Bridge(config, self.payments, self.reactor, self.fingerprint)
        # autobahn wants a URL for its headers; port 0 (any free port, in tests) is not a valid one.
        factory = CommandFactory(bridge, f"wss://{config.listen_host}:{config.listen_port or 443}")
        endpoint = SSL4ServerEndpoint(self.reactor, config.listen_port,
                                      server_options(config.tls_certificate, config.tls_key),
                                      interface=config.listen_host)
        self.port = yield endpoint.listen(factory)
        address = self.port.getHost()
        self.log.info("Listening for clients on wss://{host}:{port} with {terminals} terminal(s), "
                      "{clients} client(s)", host=address.host, port=address.port,
                      terminals=len(config.terminals), clients=len(config.clients))
        if config.uplinks:
            from bridge.uplink.service import Uplinks  # twisted.web's HTTP client: only loaded when used

            self.uplinks = Uplinks(bridge, self.reactor)
            yield self.uplinks.start()
        if config.status is not None and config.status.enabled:
            from bridge.status.service import StatusService  # prometheus_client: only loaded when used

            self.status_page = StatusService(self, self.reactor)
            yield self.status_page.start()
        self._status.ready(self.status())
        bridge.on_clients_changed = self._report_status_soon
        self.payments.subscribe(lambda event: self._report_status_soon())
        self._status_refresh = LoopingCall(self._report_status)
        self._status_refresh.clock = self.reactor
        self._status_refresh.start(STATUS_INTERVAL, now=False)
        return self.port

    def reload(self) -> Deferred:
        """Re-read the configuration (SIGHUP): clients and uplinks now, the rest at the next restart (see
        bridge.service.reload).  A configuration that does not load leaves everything as it was.  Fires with
        True once applied, False if not."""
        return self._reload_lock.run(self._reload)

    @inlineCallbacks
    def _reload(self):
        from bridge.service.reload import reloaded, restart_needed
        from bridge.terminals.catalogue import VALIDATORS

        if self.bridge is None or self._status_refresh is None:  # not started yet, or stopping
            return False
        try:
            new = load(self.config.path, VALIDATORS)
        except ConfigError as e:
            self.log.error("The configuration was not reloaded, the bridge keeps the one it had: {problems}",
                           problems="; ".join(str(p) for p in e.problems))
            return False
        stale = restart_needed(self.config, new)
        if stale:
            self.log.warn("Changed settings that only a restart applies (the running bridge keeps the old ones, "
                          "payments in flight are untouched): {settings}", settings=", ".join(stale))
        self.config = self.bridge.config = reloaded(self.config, new)
        if self.uplinks is None and self.config.uplinks:
            from bridge.uplink.service import Uplinks

            self.uplinks = Uplinks(self.bridge, self.reactor, services=[])
        if self.uplinks is not None:
            yield self.uplinks.reload(self.bridge)
        self.log.info("Configuration reloaded: {clients} client(s), {uplinks} uplink(s)",
                      clients=len(self.config.clients), uplinks=len(self.config.uplinks))
        self._report_status_soon()
        return True

    def status(self) -> str:
        """The STATUS= line: listening port, terminals up, clients connected."""
        assert self.payments is not None and self.bridge is not None
        registry = self.payments.registry
        line = status_line(self.port.getHost().port, (registry.status(name) for name in registry.names()),
                           len(self.bridge.connected))
        uplinks = self.uplinks.summary() if self.uplinks is not None else ""
        return f"{line}; {uplinks}" if uplinks else line

    def _report_status_soon(self) -> None:
        """Report within STATUS_COALESCE seconds: a busy shop changes state many times a second, and reading
        every terminal's status for each change costs more than the payments themselves."""
        if self._status_refresh is None:  # before READY and once stopping
            return
        if self._status_pending is None or not self._status_pending.active():
            self._status_pending = self.reactor.callLater(STATUS_COALESCE, self._report_status)

    def _report_status(self) -> None:
        if self._status_refresh is None:  # before READY and once stopping
            return
        try:
            self._status.status(self.status())
        except Exception:  # a status line is never worth a refused hello or a stopped refresh
            self.log.failure("Could not report the bridge's status to systemd")

    @inlineCallbacks
    def _recover(self):
        assert self.payments is not None
        try:
            settled = yield self.payments.recover()
        except BridgeError as e:
            self.log.error("Could not settle the payments left in flight yet: {message}", message=e.message,
                           code=e.code)
            return False
        for record in settled:
            self.log.warn("Payment {payment_id} was in flight at the last stop; now {state}",
                          payment_id=record.id, state=record.state, terminal=record.terminal)
        if self._recovery is not None and self._recovery.running:
            self._recovery.stop()
        return True

    def _prune(self) -> Deferred:
        assert self.payments is not None

        def pruned(count: int) -> None:
            if count:
                self.log.info("Forgot {count} payment(s) older than {days} days", count=count,
                              days=self.config.retention_days)

        d = self.payments.prune(self.config.retention_days * 86400)
        d.addCallbacks(pruned, lambda f: self.log.warn("Could not prune old payments: {error}",
                                                       error=f.getErrorMessage()))
        return d

    def stop_order(self, grace: float = STOP_GRACE) -> list[tuple[str, Callable[[], Any]]]:
        """The stop order, written once: each step ends before the next begins.  A new service adds one line.

        Stop listening and taking new payments; give the payments in flight up to ``grace`` seconds to end and
        be journaled (clients stay connected and hear of it); then close the client connections, stop the
        terminal drivers (serial ports are closed only now), the uplinks (which have delivered those payments'
        results meanwhile) and, last, the journal."""
        return [
            ("the timers", self._stop_timers),
            ("the status page", lambda: self.status_page.stop() if self.status_page is not None else None),
            ("listening", lambda: self.port.stopListening() if self.port is not None else None),
            ("payments in flight", lambda: self._let_payments_end(grace)),
            ("client connections", lambda: self.bridge.close_connections() if self.bridge is not None else None),
            ("terminal drivers", self._stop_drivers),
            ("uplinks", lambda: self.uplinks.stop() if self.uplinks is not None else None),
            ("journal", lambda: self.journal.close() if self.journal is not None else None),
        ]

    @inlineCallbacks
    def stop(self, grace: float = STOP_GRACE):
        """Stop in the order that lets a payment under way end properly (a customer typing a PIN gets their
        result): :meth:`stop_order`, one step after the other."""
        self._notify("STOPPING=1")
        for _name, step in self.stop_order(grace):
            yield maybeDeferred(step)

    def _stop_timers(self) -> None:
        for loop in (self._pruning, self._recovery):
            if loop is not None and loop.running:
                loop.stop()
        if self._status_refresh is not None:
            if self._status_refresh.running:
                self._status_refresh.stop()
            self._status_refresh = None
        if self._status_pending is not None and self._status_pending.active():
            self._status_pending.cancel()

    @inlineCallbacks
    def _let_payments_end(self, grace: float):
        if self.payments is None:
            return
        self.payments.stop_taking()
        running = self.payments.running()
        if running:
            self.log.info("Stopping: waiting up to {grace:.0f} s for {count} payment(s) in progress to end",
                          grace=grace, count=running)
        idle = self.payments.wait_idle()
        idle.addTimeout(grace, self.reactor)
        try:
            yield idle
        except Exception:
            self.log.warn("Stopping with payments still running; they will be settled at the next start")

    @inlineCallbacks
    def _stop_drivers(self):
        if self.payments is None:
            return
        registry = self.payments.registry
        for name in registry.names():
            stop = getattr(registry.driver(name), "stop", None)
            if stop is None:
                continue
            try:
                yield maybeDeferred(stop)
            except Exception:
                self.log.failure("Could not stop terminal {terminal} cleanly", terminal=name)
