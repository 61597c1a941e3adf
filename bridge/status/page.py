"""The status page's HTML: pure functions from the facts to text, every value escaped, no external assets.

Readable without JavaScript (a <noscript> refresh reloads it); with JavaScript (assets.SCRIPT) the main part is
fetched again every few seconds and swapped in place, without a reload.
"""

from __future__ import annotations

import time
from html import escape
from typing import Any, Iterable, Mapping, Optional

from bridge import __version__
from bridge.core.journal import PaymentRecord
from bridge.core.money import currency, format_major

#: Seconds between two refreshes of the page (with JavaScript: of its main part).
REFRESH_SECONDS = 5
#: Card details a page may show: the masked number and what the terminal said, never more.
SHOWN_DETAILS = (("card_masked", "card"), ("authorisation", "authorisation"), ("terminal_code", "terminal code"),
                 ("application", "application"), ("entry_mode", "entry"))
OUTCOMES = (("approved", "Paid: the receipt shows the payment approved"),
            ("declined", "Not paid: the receipt shows it declined"),
            ("cancelled", "Not paid: the receipt shows it cancelled"),
            ("failed", "Not paid: no receipt, nothing was charged"))
STATE_WORDS = {"idle": "ready", "busy": "busy with a payment", "unreachable": "cannot be reached",
               "link_problem": "its last payment lost the link", "disconnected": "disconnected",
               "down": "not answering", "offline": "offline", "error": "error", "unknown": "not known yet"}


def when(ts: Optional[float]) -> str:
    if ts is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(ts))


def ago(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    seconds = int(max(0, seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} days"


def money(record: PaymentRecord) -> str:
    try:
        return f"{format_major(record.amount, currency(record.currency))} {record.currency}"
    except Exception:
        return f"{record.amount} (minor units) {record.currency}"


def size(n: Optional[int]) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)


def health(view: Mapping[str, Any]) -> tuple[bool, str]:
    """Healthy or not, in one sentence."""
    problems = []
    down = [t["name"] for t in view["terminals"] if not t["up"]]
    if down:
        problems.append(("terminal " if len(down) == 1 else "terminals ") + ", ".join(down)
                        + " cannot take payments")
    unknown = view["unknown_count"]
    if unknown:
        problems.append(f"{unknown} payment{'s' if unknown > 1 else ''} await{'' if unknown > 1 else 's'} "
                        "a decision")
    off = [u["name"] for u in view["uplinks"] if not u["connected"]]
    if off:
        problems.append(("uplink " if len(off) == 1 else "uplinks ") + ", ".join(off) + " cannot reach the cloud")
    if not view["journal"]["writable"]:
        problems.append("the journal's disk is read-only: payments are refused")
    if problems:
        text = "; ".join(problems)
        return False, "Needs attention: " + text[0].lower() + text[1:] + "."
    count = len(view["terminals"])
    return True, f"All is well: {count} terminal{'s' if count != 1 else ''} ready to take payments."


def document(title: str, body: str, refresh: bool = False) -> str:
    head_refresh = (f'<noscript><meta http-equiv="refresh" content="{REFRESH_SECONDS}"></noscript>'
                    if refresh else "")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{escape(title)}</title>{head_refresh}"
            "<link rel=\"stylesheet\" href=\"/static/status.css\">"
            "<script src=\"/static/status.js\" defer></script></head>"
            f"<body>{body}</body></html>\n")


def login_page(bridge_name: str, message: Optional[str] = None, locked: bool = False) -> str:
    note = f'<p class="error" role="alert">{escape(message)}</p>' if message else ""
    disabled = " disabled" if locked else ""
    body = (f'<main class="login"><h1>terminal-bridge {escape(bridge_name)}</h1>'
            "<p>Status page for store IT. Sign in with the status page password "
            "(set on the bridge with <code>terminal-bridge status-page password</code>).</p>"
            f"{note}<form method=\"post\" action=\"/login\">"
            "<label for=\"password\">Password</label>"
            f"<input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" "
            f"required autofocus{disabled}>"
            f"<button type=\"submit\"{disabled}>Sign in</button></form></main>")
    return document(f"{bridge_name}: sign in", body)


def status_page(view: Mapping[str, Any], csrf: str, flash: Optional[tuple[str, str]] = None) -> str:
    body = (f'<header><h1>terminal-bridge {escape(view["bridge"])}</h1>'
            f'<form method="post" action="/logout" class="logout"><input type="hidden" name="csrf" '
            f'value="{escape(csrf)}"><button type="submit">Sign out</button></form></header>'
            f'<main id="main" data-refresh="{REFRESH_SECONDS}">{main_part(view, csrf, flash)}</main>')
    return document(f"{view['bridge']}: status", body, refresh=True)


def main_part(view: Mapping[str, Any], csrf: str, flash: Optional[tuple[str, str]] = None) -> str:
    ok, sentence = health(view)
    parts = [f'<p id="health" class="health {"ok" if ok else "bad"}" role="status">{escape(sentence)}</p>']
    if flash:
        parts.append(f'<p class="flash {escape(flash[0])}" role="alert">{escape(flash[1])}</p>')
    parts.append(_unknown(view["unknown"], view["unknown_count"], csrf))
    parts.append(_terminals(view["terminals"], view["now"]))
    parts.append(_uplinks(view["uplinks"], view["now"]))
    parts.append(_journal(view["journal"], view["today"]))
    parts.append(_bridge(view))
    parts.append(f'<p class="updated">Updated {escape(when(view["now"]))}.</p>')
    return "".join(parts)


def _dl(pairs: Iterable[tuple[str, str]]) -> str:
    return "<dl>" + "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in pairs) + "</dl>"


def _said(record: PaymentRecord) -> str:
    words = [record.reason_message or "The terminal's answer was not received."]
    for key, label in SHOWN_DETAILS:
        if record.details.get(key):
            words.append(f"{label}: {record.details[key]}")
    return " - ".join(str(w) for w in words)


def _unknown(records: list[PaymentRecord], count: int, csrf: str) -> str:
    if not records:
        return ('<section id="unknown"><h2>Payments awaiting a decision</h2>'
                "<p>None: every payment's outcome is known.</p></section>")
    items = []
    for r in records:
        pid = escape(r.id)
        options = "".join(
            f'<label class="choice"><input type="radio" name="outcome" value="{value}" required> '
            f"{escape(words)}</label>" for value, words in OUTCOMES)
        items.append(
            f'<article class="unknown" id="unknown-{pid}"><h3>{escape(money(r))} on {escape(r.terminal)}</h3>'
            + _dl([("payment", r.id), ("taken", when(r.created)), ("state since", when(r.updated)),
                   ("what the terminal said", _said(r))])
            + f'<form method="post" action="/resolve" class="resolve">'
              f'<input type="hidden" name="csrf" value="{escape(csrf)}">'
              f'<input type="hidden" name="payment_id" value="{pid}">'
              f"<fieldset><legend>What does the terminal's receipt or journal show?</legend>{options}</fieldset>"
              f'<label>Authorisation number on the receipt (if any)<input name="authorisation" maxlength="32">'
              f"</label>"
              f'<label>What you base this on<input name="note" required maxlength="500" '
              f'placeholder="receipt shows approved, auth 123456"></label>'
              f'<label>Your name<input name="operator" required maxlength="60" autocomplete="name"></label>'
              f'<button type="submit">Record the decision</button></form></article>')
    return ('<section id="unknown" class="attention"><h2>Payments awaiting a decision</h2>'
            "<p>The bridge could not learn how these payments ended. Check the terminal's receipt or journal, "
            "then record what it shows. The decision is journaled with your name.</p>"
            + (f"<p>{count} payments await a decision; the {len(records)} that have waited longest are shown "
               "here, the others with <code>terminal-bridge payments --state unknown</code>.</p>"
               if count > len(records) else "")
            + "".join(items)
            + "</section>")


def _terminals(terminals: list[dict[str, Any]], now: float) -> str:
    rows = []
    for t in terminals:
        state = str(t.get("state"))
        if not t["up"] and state in ("idle", "unknown"):
            lost = t.get("last_error") not in (None, "terminal_unreachable")
            state = "link_problem" if lost else "unreachable"
        where = t.get("address") or t.get("device") or t.get("reader") or "-"
        recent = "".join(
            f"<li>{escape(when(r.created))}: {escape(money(r))} {escape(r.kind)}, <b>{escape(r.state)}</b>"
            f"{(', card ' + escape(str(r.details['card_masked']))) if r.details.get('card_masked') else ''}"
            f"{(' - ' + escape(r.reason_message)) if r.reason_message else ''}</li>" for r in t["recent"]
        ) or "<li>none yet</li>"
        rows.append(
            f'<article class="terminal {"up" if t["up"] else "down"}" id="terminal-{escape(t["name"])}">'
            f'<h3>{escape(t["name"])} <span class="state">{escape(STATE_WORDS.get(state, state))}</span></h3>'
            + _dl([("type", str(t.get("type"))), ("address or device", str(where)),
                   ("last seen", when(t.get("last_seen")) if isinstance(t.get("last_seen"), (int, float))
                    else str(t.get("last_seen") or "no answer among its last payments")),
                   ("last link problem", t.get("problem") or "none")])
            + f"<h4>Last payments</h4><ul>{recent}</ul></article>")
    return '<section id="terminals"><h2>Terminals</h2>' + ("".join(rows) or "<p>No terminal configured.</p>") \
        + "</section>"


def _uplinks(uplinks: list[dict[str, Any]], now: float) -> str:
    if not uplinks:
        return '<section id="uplinks"><h2>Uplinks</h2><p>No uplink is configured.</p></section>'
    rows = []
    for u in uplinks:
        bus = "-" if u["bus"] is None else ("connected" if u["bus"] else "not connected")
        fetch = "-" if u["https"] is None else (f"{'working' if u['https'] else 'failing'} since "
                                                f"{when(u['https_since'])}")
        waiting = f"{u['feedback_waiting']}"
        if u["feedback_waiting"]:
            waiting += f" (oldest {ago(u['feedback_oldest_age'])} old)"
        rows.append(
            f'<article class="uplink {"up" if u["connected"] else "down"}" id="uplink-{escape(u["name"])}">'
            f'<h3>{escape(u["name"])} <span class="state">{"connected" if u["connected"] else "not connected"}'
            "</span></h3>"
            + _dl([("cloud", str(u["target"])), ("bus", bus), ("command fetch", fetch),
                   ("last fetch", when(u["fetched_at"]) if u.get("fetched_at") else "none since the bridge started"),
                   ("feedback waiting", waiting),
                   ("last error", f"{u['last_error']} ({when(u['last_error_at'])})" if u["last_error"] else "none")])
            + "</article>")
    return '<section id="uplinks"><h2>Uplinks</h2>' + "".join(rows) + "</section>"


def _journal(journal: Mapping[str, Any], today: Mapping[str, int]) -> str:
    counts = ", ".join(f"{state} {n}" for state, n in sorted(today.items())) or "none yet"
    last = journal["last_commit_at"]
    fsync = (f"{when(last)} ({journal['last_commit_seconds'] * 1000:.1f} ms)" if last is not None
             else "none since the bridge started")
    return ('<section id="journal"><h2>Journal</h2>'
            + _dl([("file", journal["path"]), ("size", size(journal["size"])), ("disk free", size(journal["free"])),
                   ("writable", "yes" if journal["writable"] else "NO: the disk is read-only"),
                   ("payments today", counts), ("last write (fsync)", fsync)])
            + "</section>")


def _bridge(view: Mapping[str, Any]) -> str:
    cert = view["certificate"]
    end = (f"{when(cert['not_after'])} (in {ago(cert['not_after'] - view['now'])})"
           if cert.get("not_after") else f"cannot be read: {cert.get('error')}")
    return ('<section id="bridge"><h2>Bridge</h2>'
            + _dl([("version", __version__), ("up for", ago(view["now"] - view["started"])),
                   ("started", when(view["started"])),
                   ("certificate fingerprint (SHA-256)", view["fingerprint"] or "-"),
                   ("certificate ends", end), ("clients connected", str(view["clients"]))])
            + "</section>")
