"""A real bridge with its status page on a port of its own, and a small HTTPS client for the tests."""

from __future__ import annotations

import http.client
import os
import ssl
import urllib.parse
from typing import Any, Optional

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from bridge.status.auth import write_password_file
from tests.support import (add_test_client, credentials_of, open_till, start_daemon, start_simulator,
                           write_config)

PASSWORD = "correct horse battery"
TOKEN = "t" * 40
PAYMENT = {"terminal": "till-1", "amount": 1234, "currency": "EUR"}


def sleep(seconds: float):
    return deferLater(reactor, seconds, lambda: None)


@inlineCallbacks
def wait_for(condition, what: str = "condition", timeout: float = 10.0, step: float = 0.02):
    for _ in range(int(timeout / step)):
        if condition():
            return
        yield sleep(step)
    raise AssertionError(f"{what} not met within {timeout} s")


def unreachable_uplink(directory: str) -> str:
    """The configuration of an uplink whose cloud cannot be reached (nothing listens at its address), with its
    secrets file written in ``directory``: add it to a bridge's configuration."""
    import os

    os.makedirs(directory, exist_ok=True)
    secrets = os.path.join(directory, "odoo.secrets")
    with open(secrets, "w") as f:
        f.write("channel_token = a1b2c3d4e5f6a7b8c9d0e1f2\nfeedback_secret = Feedback-Passphrase-0123456789\n")
    os.chmod(secrets, 0o600)
    return (f"[uplink:odoo]\nurl = https://{closed_port()}\ndatabase = shop\nclient = pos\n"
            f"secrets_file = {secrets}\n")


def closed_port() -> str:
    """An address on 127.0.0.1 where nothing listens (a terminal that cannot be reached)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


class Response:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def header(self, name: str) -> Optional[str]:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


class PageClient:
    """HTTPS to the status page (pinned to the bridge's certificate); keeps the session cookie like a browser."""

    def __init__(self, port: int, cafile: str) -> None:
        self.port = port
        self.context = ssl.create_default_context(cafile=cafile)
        self.context.check_hostname = False
        self.cookie: Optional[str] = None

    def request(self, method: str, path: str, form: Optional[dict[str, str]] = None,
                headers: Optional[dict[str, str]] = None):
        return deferToThread(self._request, method, path, form, headers or {})

    def _request(self, method: str, path: str, form: Optional[dict[str, str]], headers: dict[str, str]) -> Response:
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context, timeout=10)
        try:
            body = urllib.parse.urlencode(form).encode() if form is not None else None
            if body is not None:
                headers = {"Content-Type": "application/x-www-form-urlencoded", **headers}
            if self.cookie and "Cookie" not in headers:
                headers["Cookie"] = self.cookie
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            result = Response(response.status, response.getheaders(), response.read())
        finally:
            conn.close()
        for value in result.all("Set-Cookie"):
            pair = value.split(";", 1)[0]
            self.cookie = None if "Max-Age=0" in value else pair
        return result

    @inlineCallbacks
    def login(self, password: str = PASSWORD):
        response = yield self.request("POST", "/login", {"password": password})
        return response


class StatusBridge:
    """Start a bridge with [status] on 127.0.0.1, a password set, and Caisse-AP simulators (trial tests)."""

    @inlineCallbacks
    def start_bridge(self, test: Any, terminals: dict[str, str], status_extra: str = "", extra: str = "",
                     password: bool = True, admin: bool = False):
        directory = os.path.abspath(test.mktemp())
        os.makedirs(directory)
        self.directory = directory
        path = write_config(directory, terminals, extra=extra)
        with open(path, "a") as f:
            f.write(f"[status]\nlisten = 127.0.0.1:0\n{status_extra}\n")
        self.config_path = path
        self.client = add_test_client(path, "pos", rights=("pay", "read", "resolve", "admin") if admin
                                      else ("pay", "read"))
        self.creds = credentials_of(self.client)
        self.daemon, self.url, self.fingerprint = yield start_daemon(test, path, reactor)
        if password:
            write_password_file(self.daemon.config.status.password_file, PASSWORD)
        self.page_port = self.daemon.status_page.port.getHost().port
        return self.daemon

    def page(self) -> PageClient:
        return PageClient(self.page_port, self.daemon.config.tls_certificate)

    @inlineCallbacks
    def open(self):
        """A till's connection to the bridge, logged in, its events gathered in ``proto.events``."""
        return (yield open_till(self, reactor, self.url, self.creds, self.fingerprint))

    @inlineCallbacks
    def pay(self, proto, terminal):
        """A payment on ``terminal`` through ``proto``, followed to its end; its id."""
        started = yield proto.call("payment.start", dict(PAYMENT, terminal=terminal))
        yield wait_for(lambda: any(e["payment"]["id"] == started["id"] and e["payment"]["final"]
                                   for e in proto.events), "the payment's end")
        return started["id"]


__all__ = ["PASSWORD", "TOKEN", "PAYMENT", "StatusBridge", "PageClient", "start_simulator", "wait_for", "sleep",
           "closed_port"]
