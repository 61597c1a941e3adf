"""The uplinks the daemon runs (one per ``[uplink:NAME]``), and the status file `uplink status` reads.

Each uplink: a feedback poster (always), and for an Odoo uplink a bus link (wake-ups) and a command fetcher
(every wake-up, every (re)connect, every ``fetch_interval`` seconds).  The daemon is one process and the CLI
another, so each uplink writes its status to ``STATE_DIR/uplink/NAME.status.json`` when it changes; the CLI reads
that file and counts the feedback still waiting in the journal itself.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.logger import Logger

from bridge.api.session import Bridge
from bridge.core.reactor_types import TCPClock
from bridge.uplink.bus import BusLink, LastIdStore
from bridge.uplink.commands import CommandFetcher, Requester
from bridge.uplink.config import UplinkConfig, resolve_client
from bridge.uplink.feedback import FeedbackPoster
from bridge.uplink.https import HTTPS, TLSPolicy
from bridge.uplink.odoo_session import OdooSession


def status_path(state_dir: str, name: str) -> str:
    return os.path.join(state_dir, "uplink", f"{name}.status.json")


def last_id_path(state_dir: str, name: str) -> str:
    return os.path.join(state_dir, "uplink", f"{name}.bus.json")


def refused_path(state_dir: str, name: str) -> str:
    return os.path.join(state_dir, "uplink", f"{name}.refused.json")


class UplinkStatus:
    """What `terminal-bridge uplink status` shows, kept current in a small JSON file."""

    def __init__(self, path: str, name: str, now: Callable[[], float] = time.time) -> None:
        self.path = path
        self._now = now
        self.data: dict[str, Any] = {"name": name, "pid": os.getpid(), "bus": None, "bus_since": None,
                                     "https": None, "https_since": None, "fetched_at": None, "last_error": None,
                                     "last_error_at": None, "feedback_error": None, "running": True}

    def set(self, key: str, value: Any) -> None:
        """Record ``key`` (bus or https: True/False) and since when it holds."""
        if self.data.get(key) != value:
            self.data[key] = value
            self.data[key + "_since"] = self._now()
            self.write()

    def error(self, words: str) -> None:
        """The last error, in words, and when it happened."""
        self.data["last_error"] = words
        self.data["last_error_at"] = self._now()
        self.write()

    def feedback(self, error: Optional[str]) -> None:
        """Why feedback is not being delivered (None once it is again)."""
        if self.data.get("feedback_error") != error:
            self.data["feedback_error"] = error
            self.write()
        if error:
            self.error(error)

    def write(self) -> None:
        self.data["updated"] = self._now()
        try:
            os.makedirs(os.path.dirname(self.path), mode=0o750, exist_ok=True)
            tmp = self.path + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(self.data, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except OSError:
            pass  # the status is a convenience; the daemon's log has the same facts


def payments_can_flow(status: dict[str, Any], now: float, uplink: UplinkConfig) -> tuple[bool, Optional[str]]:
    """Whether commands and results can pass through this uplink now, by its status file, and why not.

    An Odoo uplink: the last fetch worked, and either the bus is up (it wakes the bridge for each command) or that
    fetch is recent (the periodic fetch is how commands arrive while the bus is down).  A feedback-only uplink:
    its feedback is being delivered."""
    if not status.get("running"):
        return False, "the bridge is not running this uplink"
    if not uplink.has_odoo:
        return (not status.get("feedback_error")), status.get("feedback_error")
    if status.get("https") is None:
        return False, "no fetch of commands yet"
    if not status.get("https"):
        return False, "commands cannot be fetched"
    fetched = status.get("fetched_at")
    recent = max(2 * uplink.fetch_interval, uplink.fetch_interval + 60)
    if not status.get("bus") and not (isinstance(fetched, (int, float)) and now - fetched <= recent):
        return False, "the bus is down and no fetch worked lately"
    return True, None


def read_status(path: str) -> Optional[dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class UplinkService:
    """One uplink, wired: bus -> fetcher -> the core; the core's events -> feedback poster."""

    log = Logger()

    def __init__(self, uplink: UplinkConfig, bridge: Bridge, reactor: TCPClock, https: Optional[HTTPS] = None) -> None:
        config = bridge.config
        self.uplink = uplink
        self._bridge = bridge
        self._reactor = reactor
        self.client = resolve_client(uplink, config.clients)
        self.status = UplinkStatus(status_path(config.state_dir, uplink.name), uplink.name,
                                   now=reactor.seconds)
        self.policy = TLSPolicy(uplink.ca_file)
        self.https = https or HTTPS(reactor, self.policy)
        journal = bridge.payments.journal
        # The status file is written at the first start; before it, the uplink has never run.
        self._first_run = not os.path.exists(self.status.path) and journal.acked(uplink.cursor_id) == 0
        self.poster = FeedbackPoster(
            name=uplink.name, journal=journal, client_id=self.client.id, cursor_id=uplink.cursor_id,
            url=uplink.feedback_target, passphrase=uplink.feedback_secret, hash_name=uplink.feedback_hash,
            bridge_name=config.name, post=self._post, clock=reactor, on_result=self.status.feedback,
            refused_path=refused_path(config.state_dir, uplink.name),
            ack_of=lambda payment_id: self.fetcher.ack_in_flight(payment_id) if self.fetcher is not None else None)
        self.fetcher: Optional[CommandFetcher] = None
        self.bus: Optional[BusLink] = None
        # Every request to Odoo carries the database's session (a multi-database host answers 404 without).
        self.session: Optional[OdooSession] = OdooSession(uplink, self.https) if uplink.has_odoo else None
        if self.session is not None:
            self.fetcher = CommandFetcher(uplink, client=self.client, bridge=bridge, https=self.session, clock=reactor,
                                          on_result=self._fetch_result)
            self.bus = BusLink(uplink, reactor=reactor, https=self.https,
                               store=LastIdStore(last_id_path(config.state_dir, uplink.name)),
                               on_wakeup=self.fetcher.fetch, on_state=self._bus_state, policy=self.policy,
                               session=self.session)

    def _post(self, url: str, body: bytes) -> Deferred:
        # Feedback to Odoo's own route goes with its session; another system's feedback_url gets no cookie.
        via: Requester = self.https
        if self.session is not None and self.uplink.feedback_url is None:
            via = self.session
        return via.request("POST", url, body, "application/x-www-form-urlencoded").addCallback(
            lambda response: response.code)

    def _fetch_result(self, error: Optional[str]) -> None:
        if error is None:
            self.status.data["fetched_at"] = self._reactor.seconds()  # written now or with the next change
        self.status.set("https", error is None)
        if error is None and self.bus is not None and not self.bus.state == "open":
            self.status.write()  # the bus is down: `uplink status` judges by how recent the last fetch is
        if error:
            self.status.error(error)
        else:
            self.poster.wake()  # Odoo answers: feedback waiting for a retry goes now

    def _bus_state(self, connected: bool, error: Optional[str]) -> None:
        self.status.set("bus", connected)
        if error:
            self.status.error(error)
        if self.fetcher is not None:
            self.fetcher.bus_state(connected, error)
        if connected:
            self.poster.wake()

    @inlineCallbacks
    def start(self):
        journal = self._bridge.payments.journal
        if self._first_run:
            # A new uplink reports payments from now on, not the journal's whole history.
            yield journal.ack(self.uplink.cursor_id, journal.last_seq())
        self.status.write()
        self._bridge.payments.subscribe(self.poster.on_event)
        self.poster.start()
        if self.fetcher is not None and self.bus is not None:
            self.fetcher.start()
            self.bus.start()
        self.log.info("Uplink {uplink} started ({target})", uplink=self.uplink.name,
                      target=self.uplink.url or self.uplink.feedback_target)

    @inlineCallbacks
    def stop(self):
        self._bridge.payments.unsubscribe(self.poster.on_event)
        stops = [self.poster.stop()]
        if self.bus is not None:
            stops.append(self.bus.stop())
        if self.fetcher is not None:
            stops.append(self.fetcher.stop())
        yield DeferredList(stops)
        yield self.https.close()
        self.status.data["running"] = False
        self.status.data["bus"] = False if self.bus is not None else None
        self.status.write()


class Uplinks:
    """Every configured uplink, started and stopped together by the daemon, and brought in line with a reloaded
    configuration by :meth:`reload`."""

    log = Logger()

    def __init__(self, bridge: Bridge, reactor: TCPClock, services: Optional[list[UplinkService]] = None) -> None:
        self._reactor = reactor
        self.services = [UplinkService(u, bridge, reactor) for u in bridge.config.uplinks.values()] \
            if services is None else services

    @inlineCallbacks
    def reload(self, bridge: Bridge):
        """Start the uplinks ``bridge.config`` adds, restart those it changes (their settings, secrets or client),
        stop those it removes; leave the others running."""
        config = bridge.config
        wanted = config.uplinks

        def same(service: UplinkService) -> bool:
            uplink = wanted.get(service.uplink.name)
            return uplink == service.uplink and resolve_client(uplink, config.clients) == service.client

        going = [s for s in self.services if not same(s)]
        yield DeferredList([s.stop() for s in going])
        for service in going:
            self.log.info("Uplink {uplink} stopped ({why})", uplink=service.uplink.name,
                          why="changed" if service.uplink.name in wanted else "removed")
        self.services = [s for s in self.services if s not in going]
        running = {s.uplink.name for s in self.services}
        added = []
        for uplink in wanted.values():
            if uplink.name in running:
                continue
            try:
                added.append(UplinkService(uplink, bridge, self._reactor))
            except Exception as e:  # e.g. its ca_file vanished since the check: the others still run
                self.log.error("Uplink {uplink} cannot start: {error}", uplink=uplink.name, error=e)
        self.services.extend(added)
        results = yield DeferredList([s.start() for s in added], consumeErrors=True)
        for service, (ok, result) in zip(added, results):
            if not ok:
                self.log.error("Uplink {uplink} cannot start: {error}", uplink=service.uplink.name,
                               error=result.getErrorMessage())

    def start(self) -> Deferred:
        return DeferredList([s.start() for s in self.services], fireOnOneErrback=True, consumeErrors=True)

    def stop(self) -> Deferred:
        return DeferredList([s.stop() for s in self.services])

    def summary(self) -> str:
        """For the systemd STATUS line: ``uplinks 1/2 connected``."""
        if not self.services:
            return ""
        up = sum(1 for s in self.services if s.status.data.get("bus") or s.status.data.get("https"))
        return f"uplinks {up}/{len(self.services)} connected"
