"""``[uplink:NAME]`` sections: which cloud Odoo (or plain feedback URL) an uplink talks to, and with what secrets.

The uplink speaks for one client of the clients file (``client = NAME``): that client's inbound secret checks the
commands Odoo queues, its outbound secret signs the bridge's requests and replies, exactly as on the LAN.  The two
secrets only an uplink has (the bus channel token and the SHA-OUT feedback passphrase) live in a separate file of
mode 0600 named by ``secrets_file``, so bridge.conf itself holds no secret and may stay world-readable.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional
from urllib.parse import urlsplit

FEEDBACK_HASHES = ("sha512", "sha256", "sha1")
DEFAULT_FEEDBACK_HASH = "sha512"
DEFAULT_FETCH_INTERVAL = 30
FEEDBACK_PATH = "/terminal_bridge/feedback"
PENDING_PATH = "/terminal_bridge/pending"
ACK_PATH = "/terminal_bridge/ack"
#: The bus channel is this prefix and the channel token (docs/cloud-protocol.md, "The bus channel").
CHANNEL_PREFIX = "terminal_bridge-"
MIN_CHANNEL_TOKEN = 16
MIN_FEEDBACK_SECRET = 16

KNOWN_KEYS = frozenset({"url", "database", "client", "secrets_file", "feedback_hash", "ca_file", "feedback_url",
                        "fetch_interval"})
_TOKEN = re.compile(r"[A-Za-z0-9_.-]+\Z")


@dataclass(frozen=True)
class UplinkConfig:
    name: str
    client: str  # a client's name (or id) in the clients file
    url: Optional[str]  # the Odoo base URL (https://HOST[:PORT]); None for a feedback-only uplink
    database: str
    channel_token: str = field(repr=False)
    feedback_secret: str = field(repr=False)
    feedback_hash: str = DEFAULT_FEEDBACK_HASH
    ca_file: Optional[str] = None
    feedback_url: Optional[str] = None
    fetch_interval: float = DEFAULT_FETCH_INTERVAL
    secrets_file: str = ""

    @property
    def has_odoo(self) -> bool:
        return self.url is not None

    @property
    def host(self) -> str:
        return urlsplit(self.url or self.feedback_url or "").hostname or ""

    @property
    def netloc(self) -> str:
        return urlsplit(self.url or "").netloc

    @property
    def port(self) -> int:
        return urlsplit(self.url or "").port or 443

    @property
    def origin(self) -> str:
        return f"https://{self.netloc}"

    @property
    def websocket_url(self) -> str:
        return f"wss://{self.netloc}/websocket"

    @property
    def channel(self) -> str:
        return CHANNEL_PREFIX + self.channel_token

    def route(self, path: str) -> str:
        return (self.url or "").rstrip("/") + path

    @property
    def feedback_target(self) -> str:
        return self.feedback_url or self.route(FEEDBACK_PATH)

    @property
    def cursor_id(self) -> str:
        """The journal's acks row that holds how far this uplink's feedback has been delivered."""
        return f"uplink:{self.name}"


def parse_uplink(name: str, options: Mapping[str, str], base: str) -> tuple[Optional[UplinkConfig],
                                                                           list[tuple[str, str]]]:
    """Check one ``[uplink:NAME]`` section; returns the uplink (None if unusable) and problems as (key, message).

    ``base`` is the directory relative paths are resolved against (the configuration file's).
    """
    problems: list[tuple[str, str]] = []
    for key in options:
        if key not in KNOWN_KEYS:
            problems.append((key, "unknown setting (check the spelling)"))
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
        problems.append(("", "the uplink's name may hold letters, digits, '-' and '_' only (64 at most)"))

    url = (options.get("url") or "").strip().rstrip("/") or None
    feedback_url = (options.get("feedback_url") or "").strip() or None
    if url is None and feedback_url is None:
        problems.append(("url", "missing: the Odoo address (https://HOST), or at least a feedback_url"))
    for key, value in (("url", url), ("feedback_url", feedback_url)):
        if value is None:
            continue
        parts = urlsplit(value)
        if parts.scheme != "https" or not parts.hostname:
            problems.append((key, f"{value!r} is not an https:// address (plain http would expose payments)"))
        elif key == "url" and parts.path not in ("", "/"):
            problems.append((key, "give the Odoo base address only, e.g. https://shop.odoo.com"))
        try:
            parts.port
        except ValueError:
            problems.append((key, f"{value!r} has a bad port"))

    database = (options.get("database") or "").strip()
    if url is not None and not database:
        problems.append(("database", "missing: the Odoo database name (as on the login page)"))

    client = (options.get("client") or "").strip()
    if not client:
        problems.append(("client", "missing: the name of a [client:NAME] in the clients file whose secrets sign "
                                   "this uplink's commands"))

    feedback_hash = (options.get("feedback_hash") or DEFAULT_FEEDBACK_HASH).strip().lower()
    if feedback_hash not in FEEDBACK_HASHES:
        problems.append(("feedback_hash", f"{feedback_hash!r} is not one of {', '.join(FEEDBACK_HASHES)}"))

    ca_file = (options.get("ca_file") or "").strip() or None
    if ca_file is not None:
        ca_file = os.path.join(base, ca_file)
        problem = _check_pem(ca_file)
        if problem:
            problems.append(("ca_file", problem))

    fetch_interval: float = DEFAULT_FETCH_INTERVAL
    raw = (options.get("fetch_interval") or "").strip()
    if raw:
        try:
            fetch_interval = float(raw)
        except ValueError:
            problems.append(("fetch_interval", f"{raw!r} is not a number of seconds"))
        else:
            if not 1 <= fetch_interval <= 3600:
                problems.append(("fetch_interval", "must be between 1 and 3600 seconds"))
                fetch_interval = DEFAULT_FETCH_INTERVAL

    secrets: dict[str, str] = {}
    secrets_file = (options.get("secrets_file") or "").strip()
    if not secrets_file:
        problems.append(("secrets_file", "missing: a file (mode 0600) holding channel_token and feedback_secret"))
    else:
        secrets_file = os.path.join(base, secrets_file)
        secrets, problem = read_secrets(secrets_file)
        if problem:
            problems.append(("secrets_file", problem))
    channel_token = secrets.get("channel_token", "")
    feedback_secret = secrets.get("feedback_secret", "")
    if secrets_file and not problems_for(problems, "secrets_file"):
        if url is not None and (len(channel_token) < MIN_CHANNEL_TOKEN or not _TOKEN.match(channel_token)):
            problems.append(("secrets_file", f"channel_token must be at least {MIN_CHANNEL_TOKEN} letters, digits, "
                                             "'.', '-' or '_' (Odoo shows it in the terminal bridge's settings)"))
        if len(feedback_secret) < MIN_FEEDBACK_SECRET:
            problems.append(("secrets_file", f"feedback_secret (the SHA-OUT passphrase) must be at least "
                                             f"{MIN_FEEDBACK_SECRET} characters"))

    if problems:
        return None, problems
    return UplinkConfig(name=name, client=client, url=url, database=database, channel_token=channel_token,
                        feedback_secret=feedback_secret, feedback_hash=feedback_hash, ca_file=ca_file,
                        feedback_url=feedback_url, fetch_interval=fetch_interval,
                        secrets_file=secrets_file), []


def check_clients(uplinks: Mapping[str, UplinkConfig], clients: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """Problems as (uplink name, key, message) for uplinks naming no client of the clients file."""
    problems = []
    ids = {getattr(c, "id", None) for c in clients.values()}
    for uplink in uplinks.values():
        if uplink.client not in clients and uplink.client not in ids:
            problems.append((uplink.name, "client", f"{uplink.client!r} is not a client in the clients file "
                                                    "(add one with 'terminal-bridge client add')"))
    return problems


def resolve_client(uplink: UplinkConfig, clients: Mapping[str, Any]) -> Any:
    if uplink.client in clients:
        return clients[uplink.client]
    for client in clients.values():
        if client.id == uplink.client:
            return client
    raise KeyError(uplink.client)


def problems_for(problems: list[tuple[str, str]], key: str) -> bool:
    return any(k == key for k, _ in problems)


def read_secrets(path: str) -> tuple[dict[str, str], Optional[str]]:
    """``key = value`` lines ('#' starts a comment).  Returns the values and a problem, if any."""
    try:
        mode = os.stat(path).st_mode & 0o777
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return {}, f"the file {path} does not exist"
    except PermissionError:
        return {}, f"{path} cannot be read: permission denied"
    except (OSError, UnicodeDecodeError) as e:
        return {}, f"{path} cannot be read: {e}"
    if mode & 0o077:
        return {}, f"{path} holds secrets but is readable by others (mode {mode:o}); run: chmod 600 {path}"
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            return {}, f"{path} line {number} is not 'key = value'"
        values[key.strip()] = value.strip()
    return values, None


def _check_pem(path: str) -> Optional[str]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return f"the file {path} cannot be read ({e.strerror or e})"
    if b"-----BEGIN CERTIFICATE-----" not in data:
        return f"{path} holds no PEM certificate"
    return None
