"""The text of a log event, as Twisted writes it, made with less work.

Twisted formats an event's ``log_format`` with ``string.Formatter`` (written in Python, so that ``{name()}``
can call a value) and its timestamp with ``strftime`` and a time zone lookup, for every line.  In the running
bridge that was most of the cost of a log line, and the bridge writes two for every payment
(docs/performance.md).  Here a format without calls is filled by ``str.format_map`` (the same PEP 3101 rules,
in C), and the timestamp is made once a second.  Everything else (a traceback, a flattened or bytes format, a
call in the format, a value that does not format) goes to Twisted's own functions, so the text is always what
Twisted would have written: ``tests/test_log_text.py`` checks that against Twisted's functions for any event.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from twisted.logger import LogEvent, formatEvent, formatEventAsClassicLogText, formatTime


def format_message(event: LogEvent) -> str:
    """``event``'s message, as :func:`twisted.logger.formatEvent` makes it."""
    text = _fast_message(event)
    return formatEvent(event) if text is None else text


def classic_text(event: LogEvent) -> Optional[str]:
    """``event`` as a line of text, as :func:`twisted.logger.formatEventAsClassicLogText` makes it (with
    the RFC 3339 timestamps of ``textFileLogObserver``); None when there is nothing to write."""
    text = _fast_message(event) if "log_failure" not in event else None
    system = event.get("log_system")
    if text is None or not (system is None or isinstance(system, str)):
        return formatEventAsClassicLogText(event, formatTime=_time_text)
    if not text:
        return None
    if system is None:
        level = event.get("log_level")
        system = f"{event.get('log_namespace', '-')}#{'-' if level is None else level.name}"
    line = f"{_time_text(event.get('log_time'))} [{system}] {text}"
    return line.replace("\n", "\n\t") + "\n"


def _fast_message(event: LogEvent) -> Optional[str]:
    """The message by ``str.format_map``, or None when only Twisted's formatter can say what it is."""
    fmt = event.get("log_format")
    if fmt is None:
        return None if "log_flattened" in event else ""
    if type(fmt) is not str or "()" in fmt or "log_flattened" in event:
        return None
    try:
        return fmt.format_map(event)
    except Exception:  # Twisted's formatter says why the event could not be formatted
        return None


#: The last second formatted, and its text (one tuple: a thread logging meanwhile sees both or neither).
_last: tuple[Optional[int], str] = (None, "")


def _time_text(when: Any) -> str:
    """:func:`twisted.logger.formatTime` of ``when``, made once for each second (the format shows seconds)."""
    global _last
    if when is None:
        return formatTime(when)
    second = math.floor(when)
    if when - second >= 0.999999:  # the datetime rounds to the microsecond: it may be the next second
        return formatTime(when)
    if second != _last[0]:
        _last = (second, formatTime(second))
    return _last[1]
