"""The uplink's Odoo session: a public session cookie bound to the database, sent with every request to Odoo.

On a host serving several databases, Odoo picks the database of a request from its session; without one, every
route of the module answers 404.  So the bus socket and every HTTPS call (``/pending``, ``/ack``, the feedback)
carry the cookie from ``GET /web/login?db=DB`` (no redirects followed).  One cookie is shared by an uplink's
parts; it is fetched again when Odoo answers 404 (the session was garbage-collected: the request is retried once
with a new cookie) and after the bus closed with 4001 (session expired).
"""

from __future__ import annotations

from typing import Any, Optional
from urllib.parse import quote

from twisted.internet.defer import Deferred, inlineCallbacks, succeed

from bridge.errors import BridgeError
from bridge.uplink.config import UplinkConfig

#: A reverse proxy's own answers while Odoo is down or restarting.
PROXY_CODES = frozenset({502, 503, 504})


def proxy_words(code: int) -> str:
    return f"Odoo is not reachable behind its proxy ({code}): it may be restarting"


def session_cookie(set_cookie_headers: list[str]) -> Optional[str]:
    for header in set_cookie_headers:
        first = header.split(";", 1)[0].strip()
        name, sep, value = first.partition("=")
        if sep and name.strip() == "session_id" and value.strip():
            return value.strip()
    return None


class OdooSession:
    """Requests to one uplink's Odoo with its session cookie; the same ``request`` as
    :class:`bridge.uplink.https.HTTPS`, which it wraps."""

    def __init__(self, uplink: UplinkConfig, https: Any) -> None:
        self.uplink = uplink
        self._https = https
        self.cookie: Optional[str] = None
        self._getting: list[Deferred] = []
        self.logins = 0

    def get(self) -> Deferred:
        """The cookie: the one held, or a new one (one login for any number of callers at once)."""
        if self.cookie is not None:
            return succeed(self.cookie)
        waiter: Deferred = Deferred()
        self._getting.append(waiter)
        if len(self._getting) == 1:
            self._login().addBoth(self._got)
        return waiter

    def _got(self, result: Any) -> None:
        waiters, self._getting = self._getting, []
        for waiter in waiters:
            if isinstance(result, str):
                waiter.callback(result)
            else:
                waiter.errback(result)

    def forget(self, cookie: Optional[str] = None) -> None:
        """Drop the cookie (``cookie``: only if it is still that one), so that the next request logs in again."""
        if cookie is None or cookie == self.cookie:
            self.cookie = None

    @inlineCallbacks
    def _login(self):
        self.logins += 1
        url = self.uplink.route("/web/login?db=" + quote(self.uplink.database, safe=""))
        response = yield self._https.request("GET", url)
        if response.code in PROXY_CODES:
            raise BridgeError("uplink_unreachable", proxy_words(response.code))
        if response.code == 404:
            raise BridgeError("uplink_refused", f"Odoo has no database {self.uplink.database!r} (check the "
                                                "uplink's database: the name on Odoo's login page)")
        if response.code not in (200, 302, 303):
            raise BridgeError("uplink_refused", f"Odoo's login page answered HTTP {response.code}")
        cookie = session_cookie(response.header("Set-Cookie"))
        if cookie is None:
            raise BridgeError("uplink_refused", "Odoo's login page gave no session cookie (is the uplink's url "
                                                "an Odoo server?)")
        self.cookie = cookie
        return cookie

    @inlineCallbacks
    def request(self, method: str, url: str, body: Optional[bytes] = None, content_type: Optional[str] = None,
                headers: Optional[dict[str, str]] = None):
        """As HTTPS.request, with the session cookie; a 404 is tried once more with a new session."""
        response = None
        for _ in range(2):
            cookie = yield self.get()
            all_headers = dict(headers or {})
            all_headers["Cookie"] = f"session_id={cookie}"
            response = yield self._https.request(method, url, body, content_type, headers=all_headers)
            if response.code != 404:
                break
            self.forget(cookie)
        return response

    def close(self) -> Deferred:
        return self._https.close()
