"""The running bridge: journal, terminals, payment service and the TLS WebSocket listener, wired together.

The :class:`Daemon` is a Twisted service tree (a ``MultiService``, as buildbot-worker and landscape-client are):
each part it starts becomes a child service, and stopping the daemon stops the parts one after another in
:data:`STOP_ORDER`, written once here.  Nothing else hooks the reactor's shutdown: `terminal-bridge run` and the
demo stop the daemon, the daemon stops everything it started, and only what it started (a start that failed
half-way stops the parts already up).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Mapping, Optional, cast

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, DeferredLock, inlineCallbacks, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from bridge.api.listening import listen_tls
from bridge.api.session import Bridge
from bridge.api.tls import ensure_certificate, fingerprint_of_pem, server_options
from bridge.api.websocket import CommandFactory
from bridge.config import BridgeConfig, ConfigError, load
from bridge.core.contract import TerminalDriver
from bridge.core.journal import Journal
from bridge.core.payments import PaymentService
from bridge.core.reactor_types import DelayedCall, Reactor
from bridge.core.registry import TerminalRegistry
from bridge.errors import BridgeError
from bridge.service.heap import TRIM_INTERVAL
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

#: The stop order, written once: each part ends before the next one is stopped.  Stop pinging systemd's watchdog
#: and the timers; stop serving the status page and listening for clients (the payment service refuses new
#: payments from then on, from the uplinks too); give the payments in flight up to the grace (:data:`STOP_GRACE`)
#: to end and be journaled, while clients stay connected and hear of it; then close the client connections, stop
#: the terminal drivers (serial ports are closed only now), the uplinks (which have delivered those payments'
#: results meanwhile) and, last, the journal.  A new part of the daemon adds its name here.
STOP_ORDER = ("watchdog", "timers", "status page", "listening", "payments in flight", "client connections",
              "terminal drivers", "uplinks", "journal")


def terminal_is_up(status: Mapping[str, Any]) -> bool:
    """Whether a terminal can take a payment, as its driver says (``up`` of ``terminal.status``)."""
    return status.get("up") is True


def status_line(port: int, terminals: Iterable[Mapping[str, Any]], clients: int) -> str:
    """What ``systemctl status`` shows, e.g.
    "Listening on port 8443; terminals up: 1/2 (down: till-2); clients connected: 1"."""
    terminals = list(terminals)
    down = [str(t.get("name")) for t in terminals if not terminal_is_up(t)]
    text = f"Listening on port {port}; terminals up: {len(terminals) - len(down)}/{len(terminals)}"
    if down:
        text += " (down: " + ", ".join(down[:5]) + (", ..." if len(down) > 5 else "") + ")"
    return f"{text}; clients connected: {clients}"


class Part(Service):
    """A part of the running daemon, as a child of its service tree: stopping it calls ``stop``."""

    def __init__(self, name: str, stop: Callable[[], Any]) -> None:
        self.setName(name)
        self._stop = stop

    def stopService(self) -> "Deferred[Any]":
        Service.stopService(self)
        return maybeDeferred(self._stop)


class TerminalDrivers(Service):
    """The terminal drivers: started with the service (before recovery asks them), stopped one by one."""

    log = Logger()

    def __init__(self, drivers: Iterable[TerminalDriver]) -> None:
        self.setName("terminal drivers")
        self._drivers = list(drivers)

    def startService(self) -> None:
        Service.startService(self)
        for driver in self._drivers:
            driver.start()

    @inlineCallbacks
    def stopService(self) -> Any:
        Service.stopService(self)
        for driver in self._drivers:
            try:
                yield maybeDeferred(driver.stop)
            except Exception:
                self.log.failure("Could not stop terminal {terminal} cleanly", terminal=driver.name)


class Daemon(MultiService):
    """The running bridge as a service tree: :meth:`start` brings its parts up in the order they need each other
    and adds each as a child once it is up; :meth:`stop` stops them in :data:`STOP_ORDER`."""

    log = Logger()

    def __init__(self, config: BridgeConfig, reactor: Reactor,
                 notify: Callable[[str], Any] = lambda message: False,
                 watchdog: Optional[Service] = None,
                 settle_heap: Callable[[], Any] = lambda: None,
                 trim_heap: Optional[Callable[[], Any]] = None) -> None:
        MultiService.__init__(self)
        self.config = config
        self.reactor = reactor
        self._notify = notify
        #: Called once everything is up, just before READY=1 (the process's run: bridge.service.run.settle_heap).
        self._settle_heap = settle_heap
        #: Called every heap.TRIM_INTERVAL seconds once ready (the process's run: glibc's malloc_trim), if given.
        self._trim_heap = trim_heap
        self._heap_trims: Optional[LoopingCall] = None
        self._watchdog = watchdog
        self._status = StatusReporter(notify)
        self._status_refresh: Optional[LoopingCall] = None
        self._status_pending: Optional[DelayedCall] = None
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
        self._grace = STOP_GRACE

    def addService(self, service: IService) -> None:
        """Add a part (started at once while the daemon runs); it must have its place in :data:`STOP_ORDER`."""
        if service.name not in STOP_ORDER:
            raise ValueError(f"{service.name!r} has no place in the daemon's STOP_ORDER")
        MultiService.addService(self, service)

    def _add_part(self, name: str, stop: Callable[[], Any]) -> None:
        Part(name, stop).setServiceParent(self)

    def startService(self) -> "Deferred[Any]":  # type: ignore[override]
        return self.start()

    def stopService(self) -> "Deferred[None]":  # type: ignore[override]
        return self.stop()

    @inlineCallbacks
    def start(self) -> Any:
        """Start everything; fires with the listening port once the bridge serves clients.  If a part cannot
        start, the parts already up stay children: :meth:`stop` stops them."""
        Service.startService(self)  # running: each part added from now on is started as it is added
        config = self.config
        os.makedirs(config.state_dir, mode=0o750, exist_ok=True)
        if ensure_certificate(config.tls_certificate, config.tls_key):
            self.log.info("Created a TLS key and self-signed certificate in {path}",
                          path=os.path.dirname(config.tls_certificate))
        with open(config.tls_certificate, "rb") as f:
            self.fingerprint = fingerprint_of_pem(f.read())
        self.log.info("TLS certificate fingerprint (SHA-256): {fingerprint}", fingerprint=self.fingerprint)

        journal = self.journal = Journal.open(config.journal_path, reactor=self.reactor)
        self._add_part("journal", journal.close)
        registry = TerminalRegistry(build_driver(t, self.reactor) for t in config.terminals.values())
        TerminalDrivers(registry.drivers()).setServiceParent(self)  # started now: recovery may ask them
        self.payments = PaymentService(journal, registry, self.reactor)
        self._add_part("payments in flight", self._let_payments_end)
        self._add_part("timers", self._stop_timers)
        if not journal.writable:
            self.log.critical("The journal's disk is read-only: payments are refused until it can be written "
                              "again ({path})", path=config.journal_path)
        # Recovery needs to write; on a read-only disk it is retried until it can, while the bridge serves.
        settled = yield self._recover()
        if not settled:
            self._recovery = LoopingCall(self._recover)
            self._recovery.clock = cast(IReactorTime, self.reactor)
            self._recovery.start(RECOVERY_RETRY, now=False)

        self._pruning = LoopingCall(self._prune)
        self._pruning.clock = cast(IReactorTime, self.reactor)
        self._pruning.start(PRUNE_INTERVAL, now=True)

        bridge = self.bridge = Bridge(config, self.payments, self.reactor, self.fingerprint)
        self._add_part("client connections", bridge.close_connections)
        # autobahn wants a URL for its headers; port 0 (any free port, in tests) is not a valid one.
        factory = CommandFactory(bridge, f"wss://{config.listen_host}:{config.listen_port or 443}")
        # each message to a client leaves as soon as it is made (bridge/api/listening.py)
        port = self.port = listen_tls(self.reactor, config.listen_port, factory,
                                      server_options(config.tls_certificate, config.tls_key),
                                      interface=config.listen_host)
        self._add_part("listening", port.stopListening)
        address = port.getHost()
        self.log.info("Listening for clients on wss://{host}:{port} with {terminals} terminal(s), "
                      "{clients} client(s)", host=address.host, port=address.port,
                      terminals=len(config.terminals), clients=len(config.clients))
        if config.uplinks:
            from bridge.uplink.service import Uplinks  # twisted.web's HTTP client: only loaded when used

            self._set_uplinks(Uplinks(bridge, self.reactor))
            yield self.uplinks.start()
        if config.status is not None and config.status.enabled:
            from bridge.status.service import StatusService  # prometheus_client: only loaded when used

            status_page = self.status_page = StatusService(self, self.reactor)
            self._add_part("status page", status_page.stop)
            yield status_page.start()
        self._settle_heap()
        self._status.ready(self.status())
        bridge.on_clients_changed = self._report_status_soon
        self.payments.subscribe(lambda event: self._report_status_soon())
        self._status_refresh = LoopingCall(self._report_status)
        self._status_refresh.clock = cast(IReactorTime, self.reactor)
        self._status_refresh.start(STATUS_INTERVAL, now=False)
        if self._trim_heap is not None:
            self._heap_trims = LoopingCall(self._trim_heap)
            self._heap_trims.clock = cast(IReactorTime, self.reactor)
            self._heap_trims.start(TRIM_INTERVAL, now=False)
        if self._watchdog is not None:
            self._watchdog.setName("watchdog")
            self._watchdog.setServiceParent(self)  # started as it is added: the first ping goes now
        return port

    def _set_uplinks(self, uplinks: Any) -> None:
        self.uplinks = uplinks
        self._add_part("uplinks", uplinks.stop)

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

            self._set_uplinks(Uplinks(self.bridge, self.reactor, services=[]))
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

    @inlineCallbacks
    def stop(self, grace: float = STOP_GRACE) -> Any:
        """Stop in the order that lets a payment under way end properly (a customer typing a PIN gets their
        result): the parts in :data:`STOP_ORDER`, one after another; a part that fails to stop is logged and the
        next one is stopped all the same (the journal is closed last, whatever happened before)."""
        self._notify("STOPPING=1")
        Service.stopService(self)
        self._grace = grace
        for name in STOP_ORDER:
            part = self.namedServices.get(name)
            if part is None or not part.running:
                continue
            try:
                yield maybeDeferred(part.stopService)
            except Exception:
                self.log.failure("Stopping: {part} did not stop cleanly", part=name)

    def _stop_timers(self) -> None:
        for loop in (self._pruning, self._recovery, self._heap_trims):
            if loop is not None and loop.running:
                loop.stop()
        if self._status_refresh is not None:
            if self._status_refresh.running:
                self._status_refresh.stop()
            self._status_refresh = None
        if self._status_pending is not None and self._status_pending.active():
            self._status_pending.cancel()

    @inlineCallbacks
    def _let_payments_end(self) -> Any:
        grace = self._grace
        if self.payments is None:
            return
        self.payments.stop_taking()
        running = self.payments.running()
        if running:
            self.log.info("Stopping: waiting up to {grace:.0f} s for {count} payment(s) in progress to end",
                          grace=grace, count=running)
        idle = self.payments.wait_idle()
        idle.addTimeout(grace, cast(IReactorTime, self.reactor))
        try:
            yield idle
        except Exception:
            self.log.warn("Stopping with payments still running; they will be settled at the next start")
