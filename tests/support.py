"""Fakes and builders shared by the tests (the real parts are used wherever the test is about them)."""

from __future__ import annotations

import os
from typing import Any, Optional

from twisted.internet.defer import Deferred, inlineCallbacks

from bridge.api.client import connect
from bridge.api.signing import new_secret
from bridge.config import add_client, load
from bridge.core.contract import Outcome
from bridge.terminals.catalogue import VALIDATORS
from bridge.testing.recording import RecordingDriver  # noqa: F401 - the tests import it from here too


APPROVED = Outcome("approved", "approved", "The payment was approved.", {"authorisation": "123456"})
DECLINED = Outcome("declined", "card_declined", "The card was declined by the bank.")
LINK_LOST = Outcome("unknown", "link_lost", "The link was lost after the request went out.")


def write_config(directory: str, terminals: dict[str, str], port: int = 0,
                 extra: str = "") -> str:
    """A bridge.conf under ``directory`` with Caisse-AP TCP terminals {name: "host:port"}."""
    lines = ["[bridge]", f"listen = 127.0.0.1:{port}", "state_dir = state", "clients_file = clients.conf", extra]
    for name, address in terminals.items():
        lines += [f"[terminal:{name}]", "type = caisse-ap-tcp", f"address = {address}",
                  "connect_timeout = 2", "answer_timeout = 5", "quiet_period = 0.05"]
    path = os.path.join(directory, "bridge.conf")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def add_test_client(config_path: str, name: str = "pos", rights: tuple[str, ...] = ("pay", "read"),
                    algorithm: str = "sha256") -> dict[str, str]:
    client = {"client_id": f"cl_{name}", "secret_in": new_secret(), "secret_out": new_secret(),
              "algorithm": algorithm}
    add_client(os.path.join(os.path.dirname(config_path), "clients.conf"), name, client["client_id"],
               client["secret_in"], client["secret_out"], rights, algorithm)
    return client


def load_config(path: str, **overrides: Any):
    from dataclasses import replace

    config = load(path, VALIDATORS)
    return replace(config, **overrides) if overrides else config


def port_of(listening: Any) -> int:
    return listening.getHost().port


def maybe(value: Optional[Any], default: Any) -> Any:
    return default if value is None else value


def run_in_own_reactor(reactor: Any, scenario: Any, cleanup: Any, timeout: float) -> Any:
    """Run ``scenario()`` (may return a Deferred) on a private ``reactor`` to its end, then ``cleanup()``, then
    check that nothing was left behind (timers, sockets).  Returns the scenario's result or raises its error."""
    from twisted.internet.defer import inlineCallbacks, maybeDeferred
    from twisted.python.failure import Failure

    results: list = []
    leftovers: list = []
    guard = reactor.callLater(timeout, reactor.stop)

    @inlineCallbacks
    def main():
        try:
            results.append((yield maybeDeferred(scenario)))
        except Exception:
            results.append(Failure())
        yield maybeDeferred(cleanup)
        guard.cancel()
        leftovers.extend(reactor.getDelayedCalls())
        leftovers.extend(s for s in reactor.getReaders() + reactor.getWriters() if s is not reactor.waker)
        reactor.stop()

    reactor.callWhenRunning(main)
    reactor.run(installSignalHandlers=False)
    assert results, f"the scenario did not finish within {timeout} s"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    assert leftovers == [], "left behind in the reactor"
    return results[0]


def credentials_of(client: dict[str, str]) -> Any:
    """The Credentials of a client made by :func:`add_test_client`."""
    from bridge.api.client import Credentials

    return Credentials(client["client_id"], client["secret_in"], client["secret_out"])


def start_daemon(test: Any, config_path: str, reactor: Any, **options: Any) -> Deferred:
    """Start the real Daemon on ``config_path`` for a trial test (stopped at the test's cleanup).  Fires with
    (daemon, url, fingerprint): the wss:// address it listens on and its certificate's fingerprint to pin."""
    from twisted.internet.defer import inlineCallbacks

    from bridge.api.tls import fingerprint_of_pem
    from bridge.service.daemon import Daemon

    @inlineCallbacks
    def start():
        daemon = Daemon(load_config(config_path), reactor, **options)
        port = yield daemon.start()
        test.addCleanup(daemon.stop, grace=10.0)  # not systemd's 180 s: a test ends within its own timeout
        with open(daemon.config.tls_certificate, "rb") as f:
            fingerprint = fingerprint_of_pem(f.read())
        return daemon, f"wss://127.0.0.1:{port.getHost().port}", fingerprint

    return start()



def start_simulator(test: Any, reactor: Any, script: Any = None) -> Deferred:
    """Start a Caisse-AP simulator on 127.0.0.1 for a trial test (stopped, connections dropped, at the test's
    cleanup).  Fires with (simulator factory, "127.0.0.1:PORT" to configure as the terminal's address)."""
    from twisted.internet.endpoints import TCP4ServerEndpoint

    from bridge.terminals.caisse_ap.simulator import SimulatorFactory, SimulatorScript

    simulator = SimulatorFactory(reactor, script if script is not None else SimulatorScript())

    def listening(port: Any) -> tuple[Any, str]:
        test.addCleanup(port.stopListening)
        test.addCleanup(simulator.drop_connections)
        return simulator, f"127.0.0.1:{port.getHost().port}"

    return TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(simulator).addCallback(listening)


@inlineCallbacks
def open_till(test: Any, reactor: Any, url: str, creds: Any, fingerprint: str):
    """A till's connection to a running bridge, said hello, its events gathered in ``proto.events``; closed at
    the test's cleanup unless already closed."""
    factory, opened = connect(reactor, url, creds, fingerprint=fingerprint)
    proto = yield opened
    proto.events = []
    factory.on_event = proto.events.append
    test.addCleanup(lambda: (proto.sendClose(), factory.closed)[1] if proto.state != proto.STATE_CLOSED else None)
    yield proto.call("hello", {"client": creds.client_id})
    return proto
