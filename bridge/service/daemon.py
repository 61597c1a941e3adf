"""The running bridge: journal, terminals, payment service and the TLS WebSocket listener, wired together."""

from __future__ import annotations

import os
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from bridge.api.session import Bridge
from bridge.api.tls import ensure_certificate, fingerprint_of_pem, server_options
from bridge.api.websocket import CommandFactory
from bridge.config import BridgeConfig
from bridge.core.journal import Journal
from bridge.core.payments import PaymentService
from bridge.core.registry import TerminalRegistry
from bridge.terminals.catalogue import build_driver


#: How often old payments are pruned from the journal.
PRUNE_INTERVAL = 6 * 3600


class Daemon:
    log = Logger()

    def __init__(self, config: BridgeConfig, reactor: Any,
                 notify: Callable[[str], Any] = lambda message: False) -> None:
        self.config = config
        self.reactor = reactor
        self._notify = notify
        self.journal: Optional[Journal] = None
        self.payments: Optional[PaymentService] = None
        self.port: Any = None
        self.fingerprint: Optional[str] = None
        self._pruning: Optional[LoopingCall] = None

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
        settled = yield self.payments.recover()
        for record in settled:
            self.log.warn("Payment {payment_id} was in flight at the last stop; now {state}",
                          payment_id=record.id, state=record.state, terminal=record.terminal)

        self._pruning = LoopingCall(self._prune)
        self._pruning.clock = self.reactor
        self._pruning.start(PRUNE_INTERVAL, now=True)

        bridge = Bridge(config, self.payments, self.reactor, self.fingerprint)
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
        self._notify(f"READY=1\nSTATUS=Serving {len(config.terminals)} terminal(s) on port {address.port}")
        return self.port

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
    def stop(self, grace: float = 10.0):
        """Stop listening, give running payments ``grace`` seconds to be journaled, close the journal."""
        self._notify("STOPPING=1")
        if self._pruning is not None and self._pruning.running:
            self._pruning.stop()
        if self.port is not None:
            yield self.port.stopListening()
        if self.payments is not None:
            idle = self.payments.wait_idle()
            idle.addTimeout(grace, self.reactor)
            try:
                yield idle
            except Exception:
                self.log.warn("Stopping with payments still running; they will be settled at the next start")
        if self.journal is not None:
            self.journal.close()
