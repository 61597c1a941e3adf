"""The status page's HTTP side (twisted.web): login, the page, its refreshing part, resolve, /metrics.

Every answer carries a strict Content-Security-Policy (own scripts and styles only, no frames) and is never
cached.  Forms that change something need the session's CSRF token and a same-origin ``Origin``; the session
cookie is ``Secure; HttpOnly; SameSite=Strict``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from bridge.errors import BridgeError
from bridge.status import assets, auth, page

COOKIE = b"tb_status"
MAX_BODY = 16 * 1024
MAX_OPERATOR = 60
HEADERS = {
    b"Content-Security-Policy": b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                                b"img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    b"X-Content-Type-Options": b"nosniff",
    b"Referrer-Policy": b"same-origin",  # no-referrer would make browsers send "Origin: null"
    b"Cache-Control": b"no-store",
    b"X-Frame-Options": b"DENY",
}
HTML = b"text/html; charset=utf-8"


class StatusResource(Resource):
    """One leaf resource that routes by path: the page has few addresses and each has one job."""

    isLeaf = True
    log = Logger()

    def __init__(self, app: Any) -> None:
        super().__init__()
        #: The StatusService: view(), gate, check_password(), resolve(), metrics, config.
        self.app = app

    # -- routing ----------------------------------------------------------------------------------

    def render(self, request: Any) -> Any:
        for name, value in HEADERS.items():
            request.setHeader(name, value)
        path, method = request.path, request.method
        routes: dict[tuple[bytes, bytes], Callable[[Any], Any]] = {
            (b"GET", b"/"): self.page, (b"GET", b"/fragment"): self.fragment,
            (b"GET", b"/login"): self.login_form, (b"POST", b"/login"): self.login,
            (b"POST", b"/logout"): self.logout, (b"POST", b"/resolve"): self.resolve,
            (b"GET", b"/metrics"): self.metrics,
            (b"GET", b"/static/status.css"): lambda r: self.asset(r, assets.CSS, b"text/css; charset=utf-8"),
            (b"GET", b"/static/status.js"): lambda r: self.asset(r, assets.SCRIPT,
                                                                 b"text/javascript; charset=utf-8"),
        }
        handler = routes.get((method, path))
        if handler is None:
            if any(p == path for _, p in routes):
                request.setResponseCode(405)
                return self.text(request, "This address does not take that method.")
            request.setResponseCode(404)
            return self.text(request, "There is no such page on this bridge.")
        if method == b"POST":
            if len(request.content.read(MAX_BODY + 1)) > MAX_BODY:
                request.setResponseCode(413)
                return self.text(request, "The form is too large.")
            request.content.seek(0)
            if not self.same_origin(request):
                request.setResponseCode(403)
                return self.text(request, "The form was sent from another site; open the status page itself.")
        return handler(request)

    # -- helpers ----------------------------------------------------------------------------------

    def text(self, request: Any, words: str) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return (words + "\n").encode()

    def html(self, request: Any, document: str) -> bytes:
        request.setHeader(b"Content-Type", HTML)
        return document.encode("utf-8")

    def asset(self, request: Any, body: bytes, content_type: bytes) -> bytes:
        request.setHeader(b"Content-Type", content_type)
        return body

    def redirect(self, request: Any, where: bytes) -> bytes:
        request.setResponseCode(303)
        request.setHeader(b"Location", where)
        return b""

    def same_origin(self, request: Any) -> bool:
        origin = request.getHeader(b"origin")
        if origin is None:
            return True  # older browsers, curl; the CSRF token still guards the forms that change something
        host = request.getHeader(b"host") or b""
        try:
            return urlsplit(origin.decode("ascii")).netloc == host.decode("ascii")
        except UnicodeDecodeError:
            return False

    def field(self, request: Any, name: str) -> str:
        values = request.args.get(name.encode()) or [b""]
        return values[0].decode("utf-8", "replace")

    def peer(self, request: Any) -> str:
        return getattr(request.getClientAddress(), "host", "") or ""

    def session(self, request: Any) -> Optional[auth.Session]:
        token = request.getCookie(COOKIE)
        return self.app.gate.session(token.decode("ascii", "replace") if token else None)

    def set_cookie(self, request: Any, value: str, clear: bool = False) -> None:
        expiry = b"; Max-Age=0" if clear else b""
        request.responseHeaders.addRawHeader(
            b"Set-Cookie", COOKIE + b"=" + value.encode("ascii") + b"; Path=/; Secure; HttpOnly; SameSite=Strict"
            + expiry)

    # -- the page ---------------------------------------------------------------------------------

    def page(self, request: Any) -> bytes:
        session = self.session(request)
        if session is None:
            return self.redirect(request, b"/login")
        flash, session.flash = session.flash, None
        return self.html(request, page.status_page(self.app.view(), session.csrf, flash))

    def fragment(self, request: Any) -> bytes:
        session = self.session(request)
        if session is None:
            request.setResponseCode(401)
            return self.text(request, "Sign in again.")
        return self.html(request, page.main_part(self.app.view(), session.csrf))

    # -- signing in and out -----------------------------------------------------------------------

    def login_form(self, request: Any) -> bytes:
        if self.session(request) is not None:
            return self.redirect(request, b"/")
        return self.html(request, page.login_page(self.app.config.name))

    def login(self, request: Any) -> Any:
        address = self.peer(request)
        wait = self.app.gate.locked_for(address)
        if wait:
            request.setResponseCode(429)
            return self.html(request, page.login_page(
                self.app.config.name, f"Too many wrong passwords from this device. Try again in "
                                      f"{int(wait // 60) + 1} minutes.", locked=True))
        d = self.app.check_password(self.field(request, "password"))
        if d is None:
            request.setResponseCode(503)
            return self.html(request, page.login_page(self.app.config.name, self.app.password_problem()))

        def checked(ok: bool) -> None:
            if ok:
                session = self.app.gate.open_session(address)
                self.log.info("Status page: signed in from {peer}", peer=address)
                self.set_cookie(request, session.token)
                self.finish(request, self.redirect(request, b"/"))
                return
            self.app.gate.failed(address)
            locked = self.app.gate.locked_for(address) > 0
            self.log.warn("Status page: wrong password from {peer}{locked}", peer=address,
                          locked=" (now locked out)" if locked else "")
            request.setResponseCode(429 if locked else 401)
            words = ("Wrong password. Too many tries: this device is locked out for "
                     f"{auth.LOCKOUT_SECONDS // 60} minutes." if locked else "Wrong password.")
            self.finish(request, self.html(request, page.login_page(self.app.config.name, words, locked=locked)))

        def busy(failure: Any) -> None:
            request.setResponseCode(503)
            self.finish(request, self.html(request, page.login_page(
                self.app.config.name, "Another sign-in is being checked; try again in a moment.")))

        waiting = self.later(request)
        d.addCallbacks(checked, busy)
        return waiting

    def finish(self, request: Any, body: bytes) -> None:
        """End an answer given later (after a password check or a journal write), unless the browser left."""
        if request.finished or getattr(request, "status_page_gone", False):
            return
        request.write(body)
        request.finish()

    def later(self, request: Any) -> Any:
        """NOT_DONE_YET, noting when the browser goes away meanwhile."""

        def gone(failure: Any) -> None:
            request.status_page_gone = True

        request.notifyFinish().addErrback(gone)
        return NOT_DONE_YET

    def logout(self, request: Any) -> bytes:
        session = self.session(request)
        if session is not None and auth.csrf_ok(session, self.field(request, "csrf")):
            self.app.gate.close_session(session.token)
        self.set_cookie(request, "", clear=True)
        return self.redirect(request, b"/login")

    # -- resolving an unknown payment ---------------------------------------------------------------

    def resolve(self, request: Any) -> Any:
        session = self.session(request)
        if session is None:
            request.setResponseCode(401)
            return self.text(request, "Sign in again, then record the decision.")
        if not auth.csrf_ok(session, self.field(request, "csrf")):
            request.setResponseCode(403)
            return self.text(request, "This form is out of date; reload the status page and fill it in again.")
        signed_in = session  # not Optional: the closures below keep it narrowed (older mypy would not)
        operator = " ".join(self.field(request, "operator").split())
        if not operator or len(operator) > MAX_OPERATOR:
            session.flash = ("error", f"Write your name (at most {MAX_OPERATOR} characters): the decision is "
                                      "journaled with it. Nothing was recorded.")
            return self.redirect(request, b"/")
        d: Deferred = maybeDeferred(self.app.resolve, self.field(request, "payment_id"),
                                    self.field(request, "outcome"), operator, self.field(request, "note"),
                                    self.field(request, "authorisation"))

        def done(payment: dict[str, Any]) -> None:
            signed_in.flash = ("ok", f"Payment {payment['id']} recorded as {payment['state']} by {operator}.")
            self.finish(request, self.redirect(request, b"/"))

        def refused(failure: Any) -> None:
            if failure.check(BridgeError):
                words = failure.value.message
            else:
                self.log.failure("Status page: resolve failed", failure)
                words = "The bridge hit an internal error; it has been logged."
            signed_in.flash = ("error", f"Not recorded: {words}")
            self.finish(request, self.redirect(request, b"/"))

        waiting = self.later(request)
        d.addCallbacks(done, refused)
        return waiting

    # -- metrics ----------------------------------------------------------------------------------

    def metrics(self, request: Any) -> bytes:
        config = self.app.status_config
        if not config.metrics_token and not config.metrics_allow:
            request.setResponseCode(403)
            return self.text(request, "Metrics are off: set metrics_token or metrics_allow in bridge.conf's "
                                      "[status] section.")
        if not config.may_scrape(self.peer(request), request.getHeader(b"authorization")):
            if config.metrics_token:
                request.setResponseCode(401)
                request.setHeader(b"WWW-Authenticate", b'Bearer realm="terminal-bridge metrics"')
            else:
                request.setResponseCode(403)
            return self.text(request, "Not allowed to read the metrics: send the bearer token, or scrape from an "
                                      "address in metrics_allow.")
        request.setHeader(b"Content-Type", b"text/plain; version=0.0.4; charset=utf-8")
        return self.app.metrics.exposition()


class QuietSite(Site):
    """A Site that does not write an access log line per request (a refresh every few seconds, scrapes)."""

    noisy = False

    def log(self, request: Any) -> None:
        pass
