"""Tell systemd how the bridge is doing: readiness, status lines, watchdog pings.

The protocol is sd_notify(3): one datagram of ``KEY=value`` lines sent to the
AF_UNIX socket named by ``NOTIFY_SOCKET`` (a path, or ``@name`` in the abstract
namespace). Outside systemd the variable is unset and every call is a cheap no-op
that returns False, so the daemon runs the same way from a shell.

python3-systemd is used when it is there (the .deb depends on Debian's package);
otherwise the datagram is sent by hand (``_send_datagram``). The development
virtual environment of ``make run``/``make test`` deliberately does without it
(issue #14 item 8, #17 item 9): PyPI's systemd-python builds from source against
libsystemd-dev, whose version must equal the installed libsystemd0's, so installing
it for a demo upgraded the machine's systemd. The protocol is one datagram; the
hand-written sender is all a daemon needs, and ``make test-bookworm`` tests the
python3-systemd path.

Usage from the entry point::

    notifier = StatusReporter()
    WatchdogService(reactor, interval=watchdog_interval()).setServiceParent(app)
    ...  # config loaded, listeners up
    notifier.ready("listening on 0.0.0.0:8443, 2/3 terminals up")
"""

import os
import socket
from typing import Callable, Mapping, Optional

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()

Notify = Callable[[str], bool]


def notify(message: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Send one sd_notify datagram; True if it was handed to the socket.

    python3-systemd's ``systemd.daemon.notify`` is used when it is importable and
    ``environ`` is the process environment (the C library only reads the real
    environment); otherwise the datagram is sent here. Send errors are returned
    as False, never raised: losing a status line must not stop a payment.
    """
    address = environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if environ is os.environ:
        try:
            import systemd.daemon as daemon
        except ImportError:
            pass
        else:
            try:
                return bool(daemon.notify(message))
            except OSError:
                return False
    return _send_datagram(address, message.encode("utf-8"))


def _send_datagram(address: str, payload: bytes) -> bool:
    if address.startswith("@"):
        target = "\0" + address[1:]
    elif address.startswith("/"):
        target = address
    else:
        # e.g. "vsock:..." (systemd >= 254): not a transport a shop's Pi uses.
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto(payload, target)
        except OSError:
            return False
    return True


def watchdog_interval(environ: Mapping[str, str] = os.environ) -> Optional[float]:
    """The watchdog timeout systemd expects, in seconds, or None when disabled.

    ``WATCHDOG_USEC`` is set by ``WatchdogSec=``; ``WATCHDOG_PID``, when set, names
    the process meant to ping, so a child that inherited the variables stays quiet.
    """
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = environ.get("WATCHDOG_PID")
    if pid is not None and pid.strip() != str(os.getpid()):
        return None
    return usec / 1_000_000


class StatusReporter:
    """READY=1 and STATUS= lines for ``systemctl status``.

    A status identical to the last one sent is not sent again, so callers may
    report on every change of state without counting.
    """

    def __init__(self, notify: Notify = notify):
        self._notify = notify
        self._last_status: Optional[str] = None

    def ready(self, status: Optional[str] = None) -> bool:
        message = "READY=1"
        if status is not None:
            message += "\nSTATUS=" + _one_line(status)
            self._last_status = _one_line(status)
        return self._notify(message)

    def status(self, text: str) -> bool:
        text = _one_line(text)
        if text == self._last_status:
            return True
        self._last_status = text
        return self._notify("STATUS=" + text)


def _one_line(text: str) -> str:
    # A newline would start a new KEY=value assignment in the datagram.
    return " ".join(text.splitlines())


class WatchdogService(Service):
    """Pings systemd's watchdog from the reactor thread.

    It does not say STOPPING=1 when it stops: the daemon says it once, as its stop begins (systemd needs it
    once; it was sent twice when both said it).

    The ping is a LoopingCall on ``clock`` every ``interval / 2`` seconds, so a
    reactor that is blocked or deadlocked stops pinging and systemd restarts the
    bridge. ``healthy`` (optional) gates the ping on internal health only, never on
    the cloud being reachable: an offline shop is not a wedged daemon.
    ``interval`` None (no ``WatchdogSec=``) disables the pings.
    """

    def __init__(
        self,
        clock,
        notify: Notify = notify,
        interval: Optional[float] = None,
        healthy: Optional[Callable[[], bool]] = None,
    ):
        self.setName("systemd-watchdog")
        self._clock = clock
        self._notify = notify
        self._interval = interval
        self._healthy = healthy
        self._loop: Optional[LoopingCall] = None

    def startService(self):
        super().startService()
        if self._interval:
            self._loop = LoopingCall(self._ping)
            self._loop.clock = self._clock
            self._loop.start(self._interval / 2, now=True)

    def stopService(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return super().stopService()

    def _ping(self):
        if self._healthy is not None:
            try:
                healthy = self._healthy()
            except Exception:
                log.failure("Health check for the systemd watchdog failed")
                healthy = False
            if not healthy:
                log.warn("Not pinging the systemd watchdog: the bridge reports itself unhealthy")
                return
        self._notify("WATCHDOG=1")
