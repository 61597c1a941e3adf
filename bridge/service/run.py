"""`terminal-bridge run`: logging, the reactor, the daemon, systemd notifications and a clean stop."""

from __future__ import annotations

import gc
import os
import signal
import sys
from typing import Any

from twisted.logger import (FilteringLogObserver, Logger, LogLevel, LogLevelFilterPredicate,
                            globalLogBeginner)

from bridge.config import BridgeConfig
from bridge.errors import BridgeError
from bridge.service.cpu import keep_on_one_cpu
from bridge.service.daemon import Daemon
from bridge.service.heap import malloc_trim
from bridge.service.journald import make_observer
from bridge.service.reactor import global_reactor
from bridge.service.sdnotify import WatchdogService, notify, watchdog_interval

log = Logger()

LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn, "error": LogLevel.error}


def start_logging(level: str) -> None:
    import txaio

    # autobahn logs through txaio; at its global level the calls below it become no-ops instead of events
    # that are built and then filtered out (a measurable share of a payment's CPU, docs/performance.md).
    txaio.set_global_log_level(  # type: ignore[attr-defined]  # set by txaio.use_twisted(), so unseen by mypy
        level if level in ("debug", "info", "warn", "error") else "info")
    # Any: ILogObserver and ILogFilterPredicate values, which mypy cannot match without the mypy-zope plugin
    journal_or_text: Any = make_observer()
    predicates: list[Any] = [LogLevelFilterPredicate(defaultLogLevel=LEVELS.get(level, LogLevel.info))]
    observer: Any = FilteringLogObserver(journal_or_text, predicates)
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def run_daemon(config: BridgeConfig) -> int:
    reactor = global_reactor()

    start_logging(config.log_level)
    # before the daemon starts its threads (the journal's writer): they take the reactor thread's CPU
    keep_on_one_cpu(config.cpu)
    daemon = Daemon(config, reactor, notify=notify,
                    watchdog=WatchdogService(reactor, notify=notify, interval=watchdog_interval()),
                    settle_heap=settle_heap, trim_heap=malloc_trim())
    exit_code = [0]
    reload_asked = [False]  # SIGHUP before the daemon was ready: reload once it is

    def started(_: Any) -> None:
        reactor.addSystemEventTrigger("before", "shutdown", stopping)
        record_pid(daemon.config.pid_path)
        if reload_asked[0]:
            reload()

    def stopping() -> Any:
        forget_pid(daemon.config.pid_path)
        return daemon.stopService()

    def reload() -> None:
        if daemon.bridge is None:
            reload_asked[0] = True
            return
        log.info("Reloading the configuration (SIGHUP)")
        daemon.reload().addErrback(lambda f: log.failure("The configuration could not be reloaded", f))

    # SIGHUP (systemctl reload, `uplink pair`): re-read clients and uplinks.  The handler only hands over to the
    # reactor's thread; without it, SIGHUP would end the process.
    signal.signal(signal.SIGHUP, lambda signum, frame: reactor.callFromThread(reload))

    def failed(failure: Any) -> None:
        if failure.check(BridgeError):
            log.critical("The bridge cannot start: {message}", message=failure.value.message,
                         code=failure.value.code)
        else:
            log.failure("The bridge cannot start", failure)
        exit_code[0] = 1
        # what did start (the journal, the drivers: a serial port) stops in the daemon's order, then the reactor
        daemon.stopService().addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(lambda: daemon.startService().addCallbacks(started, failed))
    reactor.run()
    return exit_code[0]


def settle_heap() -> None:
    """Once the bridge is up: collect the start's garbage, then move every object left (the modules, the
    configuration, the TLS context: some 300,000) out of the cyclic garbage collector's sight (``gc.freeze``).
    They live as long as the process; without this, each full collection walks them all again: a pause of
    30-40 ms of the reactor (several a minute under the benchmark's load) that a payment running meanwhile
    waits out, 4-5 ms with it (docs/performance.md).  Objects made later are collected as before."""
    gc.collect()
    gc.freeze()


def record_pid(path: str) -> None:
    """Write this process's pid where `uplink pair` looks for the bridge to signal."""
    try:
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="ascii") as f:
            f.write(f"{os.getpid()}\n")
        os.replace(tmp, path)
    except OSError as e:
        log.warn("Cannot record the bridge's pid in {path}: {error}", path=path, error=e)


def forget_pid(path: str) -> None:
    try:
        with open(path, encoding="ascii") as f:
            mine = f.read().strip() == str(os.getpid())
        if mine:
            os.unlink(path)
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit("use `terminal-bridge run`")
