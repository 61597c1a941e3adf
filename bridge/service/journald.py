"""Send the bridge's log events to journald with queryable fields.

Under systemd each event becomes one journal entry: the formatted message (and the
traceback, whole, when the event carries a failure), a PRIORITY from its level, and
the payment fields the bridge logs, so an installer can ask::

    journalctl -u terminal-bridge PAYMENT_ID=... TERMINAL=till-1 PRIORITY=3

Outside systemd (a shell, a test) the same events are written as plain text.
"""

import os
import re
import sys
from typing import Callable, Mapping, Optional, TextIO

from twisted.logger import FileLogObserver, ILogObserver, LogEvent, LogLevel
from zope.interface import implementer

from bridge.service.log_text import classic_text, format_message

IDENTIFIER = "terminal-bridge"

PRIORITIES = {
    LogLevel.debug: 7,
    LogLevel.info: 6,
    LogLevel.warn: 4,
    LogLevel.error: 3,
    LogLevel.critical: 2,
}

# Event keys the bridge logs on payment lines, and their journal field names.
FIELDS = {
    "payment_id": "PAYMENT_ID",
    "terminal": "TERMINAL",
    "state": "STATE",
    "amount": "AMOUNT",
    "currency": "CURRENCY",
    "client": "CLIENT",
    "code": "CODE",
}

_VALID_NAME = re.compile(r"[A-Z0-9][A-Z0-9_]*\Z")
_SECRET_NAME = re.compile(r"SECRET|KEY|PASSW|TOKEN|SIG|CREDENTIAL")

Send = Callable[..., object]


def _journal_send(**fields: str) -> None:
    """Send exactly ``fields`` to journald.

    ``systemd.journal.send`` would add CODE_FILE/CODE_LINE of its caller, which is
    always this module; ``sendv`` sends only what the event says.
    """
    import systemd.journal as journal

    journal.sendv(*(f"{name}={value}" for name, value in fields.items()))


@implementer(ILogObserver)
class JournaldObserver:
    """An ILogObserver that sends each event to journald through ``send``.

    ``send`` is called with keyword fields (MESSAGE, PRIORITY, ...), the calling
    convention of ``systemd.journal.send``. If it raises (journald restarting, a
    full socket buffer), the event goes to ``fallback`` when one is given.
    """

    def __init__(
        self,
        send: Send = _journal_send,
        fields: Mapping[str, str] = FIELDS,
        identifier: str = IDENTIFIER,
        fallback: Optional[Callable[[LogEvent], None]] = None,
    ):
        self._send = send
        self._fields = {
            key: name
            for key, name in fields.items()
            if _VALID_NAME.match(name) and not _SECRET_NAME.search(name)
        }
        self._identifier = identifier
        self._fallback = fallback

    def __call__(self, event: LogEvent) -> None:
        try:
            self._send(**self.fields(event))
        except Exception:
            if self._fallback is None:
                raise
            self._fallback(event)

    def fields(self, event: LogEvent) -> dict:
        """The journal fields for ``event``, all values as text."""
        message = format_message(event)
        failure = event.get("log_failure")
        if failure is not None:
            traceback = failure.getTraceback()
            message = f"{message}\n{traceback}" if message else traceback
        fields = {
            "MESSAGE": message.rstrip("\n"),
            "PRIORITY": str(PRIORITIES.get(event.get("log_level"), 6)),
            "SYSLOG_IDENTIFIER": self._identifier,
        }
        namespace = event.get("log_namespace")
        if namespace:
            fields["LOG_NAMESPACE"] = str(namespace)
        for key, name in self._fields.items():
            value = event.get(key)
            if value is not None:
                fields[name] = str(value)
        return fields


def make_observer(
    environ: Mapping[str, str] = os.environ, stream: Optional[TextIO] = None
) -> Callable[[LogEvent], None]:
    """The observer the daemon should log to (an ILogObserver: a callable taking each event).

    journald when the process's output goes to the journal (``JOURNAL_STREAM``, set
    by systemd, names the same file as ``stream``) and python3-systemd is installed;
    otherwise timestamped text lines on ``stream`` (default: stdout).
    """
    if stream is None:
        stream = sys.stdout
    text = FileLogObserver(stream, classic_text)  # textFileLogObserver's lines, made faster
    if not _connected_to_journal(environ, stream):
        return text
    try:
        import systemd.journal  # noqa: F401  (only to know it is there)
    except ImportError:
        return text
    return JournaldObserver(fallback=text)


def _connected_to_journal(environ: Mapping[str, str], stream: TextIO) -> bool:
    value = environ.get("JOURNAL_STREAM")
    if not value:
        return False
    try:
        device, inode = (int(part) for part in value.split(":"))
    except ValueError:
        return False
    try:
        status = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        # Not a real file (e.g. a StringIO): trust the variable.
        return True
    # A child started with its output redirected inherits JOURNAL_STREAM
    # although it no longer writes to the journal (sd_journal_stream_fd(3)).
    return (status.st_dev, status.st_ino) == (device, inode)


__all__ = ["FIELDS", "JournaldObserver", "PRIORITIES", "make_observer"]
