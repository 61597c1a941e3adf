"""Pairing a bridge with a cloud Odoo by a one-time code (docs/cloud-protocol.md, "Pairing").

Odoo makes every secret; the box asks for them once with the code the administrator was shown, then writes the
client (clients file), the uplink's secrets file and the ``[uplink:NAME]`` section of bridge.conf.  Nobody copies
a secret by hand.

The exchange (:func:`pair`): ``GET URL/web/login?db=DB`` for a session cookie bound to the database, then ``POST
URL/terminal_bridge/pair`` with it.  The files (:func:`write_pairing`): written whole and renamed into place, each
with its owner and mode; a section of bridge.conf is replaced in place, and the rest of the file, comments
included, is kept as it was.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Optional
from urllib.parse import quote, urlsplit

from twisted.internet.defer import inlineCallbacks

from bridge import __version__
from bridge.errors import BridgeError
from bridge.uplink.config import FEEDBACK_HASHES, MIN_CHANNEL_TOKEN, MIN_FEEDBACK_SECRET

PAIR_PATH = "/terminal_bridge/pair"
CODE_ALPHABET = "ABCDEFGHJKMNPQRSTVWXYZ23456789"
CODE_LENGTH = 16
#: The keys of an [uplink:NAME] section that pairing writes; any other line of the section is kept.
PAIRED_KEYS = ("url", "database", "client", "secrets_file", "feedback_hash", "ca_file")
CLIENT_ALGORITHMS = ("sha256", "sha512")
MIN_CLIENT_SECRET = 32
_TOKEN = re.compile(r"[A-Za-z0-9_.-]+\Z")
_SECRET = re.compile(r"[\x21-\x7e]+\Z")  # printable ASCII without spaces: fits a key = value line
_HEADER = re.compile(r"\s*\[([^\]]*)\]")

#: Odoo's error codes (docs/cloud-protocol.md) and what the installer should do about each.
ERROR_WORDS = {
    "bad_request": "Odoo could not read the pairing request ({message}). Check that the address is the Odoo "
                   "server's and that nothing between them rewrites requests.",
    "wrong_code": "Odoo knows no such pairing code. Type it again as Odoo shows it, or click 'Pair a bridge' "
                  "in Odoo for a new one.",
    "expired_code": "The pairing code has expired (a code is valid for 10 minutes). Click 'Pair a bridge' in "
                    "Odoo for a new one.",
    "used_code": "This pairing code was already used (a code works once). Click 'Pair a bridge' in Odoo for a "
                 "new one.",
    "too_many_attempts": "Odoo refuses pairing for the rest of this minute: too many wrong codes were tried. "
                         "Wait a minute, then try again with the code Odoo shows.",
}
STATUS_CODES = {400: "bad_request", 403: "wrong_code", 409: "used_code", 410: "expired_code",
                429: "too_many_attempts"}


@dataclass(frozen=True)
class Pairing:
    """What Odoo answered: the client's and the uplink's secrets."""

    bridge: str  # the bridge record's name in Odoo
    database: str
    client_id: str
    secret_in: str = field(repr=False)
    secret_out: str = field(repr=False)
    algorithm: str
    rights: tuple[str, ...]
    channel_token: str = field(repr=False)
    feedback_secret: str = field(repr=False)
    feedback_hash: str


def normalize_code(text: str) -> str:
    """The code as Odoo checks it: dashes and spaces dropped, upper case; BridgeError ``bad_code`` if it cannot
    be one (checked before anything is sent)."""
    code = re.sub(r"[\s-]+", "", text).upper()
    if len(code) != CODE_LENGTH or any(c not in CODE_ALPHABET for c in code):
        raise BridgeError("bad_code", f"{text!r} is not a pairing code: Odoo shows 16 letters and digits in groups "
                                      "of four, e.g. K7QD-M2XP-9RWT-HV4C.")
    return code


def default_name(database: str) -> str:
    """``odoo-<database>``, with any character a section name cannot hold made a '-'."""
    return ("odoo-" + re.sub(r"[^A-Za-z0-9_-]", "-", database))[:64]


def check_url(url: str) -> str:
    """The Odoo base address, https only, without a trailing slash."""
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise BridgeError("bad_url", f"{url!r} is not an Odoo base address like https://shop.example.com (https "
                                     "only: plain http would expose the secrets).")
    try:
        parts.port
    except ValueError:
        raise BridgeError("bad_url", f"{url!r} has a bad port.") from None
    return url


def _proxy(code: int, what: str) -> Optional[str]:
    """A reverse proxy's own answer while Odoo is down or restarting."""
    from bridge.uplink.odoo_session import PROXY_CODES, proxy_words

    return f"{what}: {proxy_words(code)}. Try again in a minute." if code in PROXY_CODES else None


def _object(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one."""
    return value if isinstance(value, dict) else {}


def parse_answer(code: int, body: bytes, database: str) -> Pairing:
    """Odoo's answer to ``/terminal_bridge/pair``: the secrets, or BridgeError with the installer's words."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        data = None
    if code != 200:
        error = data.get("error") if isinstance(data, dict) else None
        error = error if isinstance(error, dict) else {}
        name = error.get("code") if error.get("code") in ERROR_WORDS else STATUS_CODES.get(code)
        message = str(error.get("message") or f"HTTP {code}")
        if name is not None:
            raise BridgeError(name, ERROR_WORDS[name].format(message=message))
        if code == 404:
            raise BridgeError("not_installed", f"Odoo has no pairing in database {database!r}: install the "
                                               "'Terminal bridge' module in that database, or check --database "
                                               "(the name on Odoo's login page).")
        raise BridgeError("pair_refused", _proxy(code, "Pairing failed")
                          or f"Pairing failed: Odoo answered HTTP {code} ({message}).")
    if not isinstance(data, dict):
        raise BridgeError("bad_answer", "Odoo's answer to the pairing is not JSON (is this address an Odoo "
                                        "server with the 'Terminal bridge' module?).")
    client = _object(data.get("client"))
    uplink = _object(data.get("uplink"))
    problems = []

    def text(source: dict[str, Any], key: str, minimum: int = 1, pattern: re.Pattern = _SECRET) -> str:
        value = source.get(key)
        if not isinstance(value, str) or len(value) < minimum or not pattern.match(value):
            problems.append(key)
            return ""
        return value

    client_id = text(client, "id")
    secret_in = text(client, "secret_in", MIN_CLIENT_SECRET)
    secret_out = text(client, "secret_out", MIN_CLIENT_SECRET)
    if secret_in and secret_in == secret_out:
        problems.append("secret_out (same as secret_in)")
    algorithm = client.get("algorithm", "sha256")
    if algorithm not in CLIENT_ALGORITHMS:
        problems.append("algorithm")
    rights = client.get("rights", ["pay", "read"])
    from bridge.config import RIGHTS

    if not isinstance(rights, list) or not rights or any(r not in RIGHTS for r in rights):
        problems.append("rights")
        rights = []
    channel_token = text(uplink, "channel_token", MIN_CHANNEL_TOKEN, _TOKEN)
    feedback_secret = text(uplink, "feedback_secret", MIN_FEEDBACK_SECRET)
    feedback_hash = uplink.get("feedback_hash", "sha512")
    if feedback_hash not in FEEDBACK_HASHES:
        problems.append("feedback_hash")
    if problems:
        raise BridgeError("bad_answer", "Odoo's pairing answer cannot be used (missing or unfit: "
                                        f"{', '.join(problems)}); nothing was written. Update the 'Terminal "
                                        "bridge' module in Odoo.")
    return Pairing(bridge=str(data.get("bridge") or ""), database=str(data.get("database") or database),
                   client_id=client_id, secret_in=secret_in, secret_out=secret_out, algorithm=algorithm,
                   rights=tuple(rights), channel_token=channel_token, feedback_secret=feedback_secret,
                   feedback_hash=feedback_hash)


@inlineCallbacks
def pair(https: Any, url: str, database: str, code: str, bridge_name: str, fingerprint: Optional[str]):
    """The exchange with Odoo, over ``https`` (a :class:`bridge.uplink.https.HTTPS`); fires with a
    :class:`Pairing` or fails with BridgeError in words."""
    from bridge.uplink.odoo_session import session_cookie

    login = yield https.request("GET", url + "/web/login?db=" + quote(database, safe=""))
    if login.code == 404:
        raise BridgeError("unknown_database", f"Odoo has no database {database!r}: give --database as Odoo's "
                                              "login page names it.")
    if login.code not in (200, 302, 303):
        raise BridgeError("login_refused", _proxy(login.code, "Odoo's login page failed")
                          or f"Odoo's login page answered HTTP {login.code} (is {url} the Odoo server?).")
    cookie = session_cookie(login.header("Set-Cookie"))
    if cookie is None:
        raise BridgeError("login_refused", f"Odoo's login page gave no session cookie (is {url} the Odoo server?).")
    body = json.dumps({"code": code, "database": database,
                       "bridge": {"name": bridge_name, "version": __version__, "fingerprint": fingerprint}})
    answer = yield https.request("POST", url + PAIR_PATH, body.encode("utf-8"), "application/json",
                                 headers={"Cookie": f"session_id={cookie}"})
    return parse_answer(answer.code, answer.body, database)


# -- the files ------------------------------------------------------------------------------------------


def secrets_text(pairing: Pairing) -> str:
    return (f"# From the terminal bridge {pairing.bridge!r} in Odoo (database {pairing.database}), written by\n"
            f"# 'terminal-bridge uplink pair'. Pair again to rotate these secrets.\n"
            f"channel_token = {pairing.channel_token}\nfeedback_secret = {pairing.feedback_secret}\n")


def section_lines(url: str, pairing: Pairing, name: str, secrets_file: str, ca_file: Optional[str]) -> list[str]:
    lines = [f"url = {url}", f"database = {pairing.database}", f"client = {name}",
             f"secrets_file = {secrets_file}", f"feedback_hash = {pairing.feedback_hash}"]
    if ca_file:
        lines.append(f"ca_file = {ca_file}")
    return lines


def replace_section(text: str, section: str, lines: list[str], managed: tuple[str, ...] = PAIRED_KEYS) -> str:
    """``text`` (an INI file) with ``[section]`` holding ``lines`` first, then whatever else it held (comments,
    keys pairing does not manage); appended at the end when there was no such section.  Every other line of the
    file is kept as it was."""
    source = text.splitlines()
    start = next((i for i, line in enumerate(source) if (m := _HEADER.match(line)) and m.group(1) == section),
                 None)
    if start is None:
        head = source + ([""] if source and source[-1].strip() else [])
        return "\n".join(head + [f"[{section}]"] + lines) + "\n"
    end = next((i for i in range(start + 1, len(source)) if _HEADER.match(source[i])), len(source))
    kept = []
    for line in source[start + 1:end]:
        key = line.split("=", 1)[0].strip().lower() if "=" in line and not line.lstrip().startswith(("#", ";")) \
            else None
        if key not in managed:
            kept.append(line)
    return "\n".join(source[:start + 1] + lines + kept + source[end:]) + "\n"


def write_file(path: str, text: str, mode: int, owner: Optional[tuple[int, int]]) -> None:
    """Write ``text`` to ``path`` whole (a temporary file renamed into place), with ``mode`` and ``owner``."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        if owner is not None:
            os.chown(tmp, *owner)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@dataclass(frozen=True)
class Written:
    clients_file: str
    secrets_file: str
    config_file: str
    replaced: bool  # an [uplink:NAME] section was already there


def write_pairing(config_path: str, clients_file: str, name: str, url: str, pairing: Pairing,
                  ca_file: Optional[str], owner: Optional[tuple[int, int]]) -> Written:
    """Write the client, the secrets file and the [uplink:NAME] section.  ``owner``: the bridge's account
    (uid, gid), given when run as root, for the two files of secrets."""
    from bridge.config import add_client, load_clients

    problems: list[Any] = []
    others = [c for c in load_clients(clients_file, problems).values()
              if c.id == pairing.client_id and c.name != name]
    if others:
        raise BridgeError("name_taken", f"This Odoo's client is already [client:{others[0].name}] in "
                                        f"{clients_file}: pair with --name {others[0].name} to replace it.")
    base = os.path.dirname(os.path.abspath(config_path))
    secrets_name = f"uplink-{name}.secrets"
    secrets_path = os.path.join(base, secrets_name)
    write_file(secrets_path, secrets_text(pairing), 0o600, owner)
    add_client(clients_file, name, pairing.client_id, pairing.secret_in, pairing.secret_out, pairing.rights,
               pairing.algorithm, owner, replace=True)
    with open(config_path, encoding="utf-8") as f:
        text = f.read()
    section = f"uplink:{name}"
    replaced = any((m := _HEADER.match(line)) and m.group(1) == section for line in text.splitlines())
    new_text = replace_section(text, section, section_lines(url, pairing, name, secrets_name, ca_file))
    st = os.stat(config_path)
    write_file(config_path, new_text, st.st_mode & 0o777,
               (st.st_uid, st.st_gid) if os.geteuid() == 0 else None)
    return Written(clients_file, secrets_path, config_path, replaced)
