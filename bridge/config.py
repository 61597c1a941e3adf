"""The configuration: one INI file for the bridge and its terminals, one 0600 file for client credentials.

Built once at start from the file (and the command line), then passed to whatever needs it.  Every problem is
reported with its file, section and key, all at once, so an installer fixes them in one go.
"""

from __future__ import annotations

import configparser
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Union

from bridge.api.signing import ALGORITHMS, MIN_SECRET_BYTES, REFUSED_ALGORITHMS
from bridge.status.config import StatusConfig, parse_status
from bridge.uplink.config import UplinkConfig, check_clients, parse_uplink

DEFAULT_CONFIG_PATH = "/etc/terminal-bridge/bridge.conf"
DEFAULT_STATE_DIR = "/var/lib/terminal-bridge"
DEFAULT_PORT = 8443
#: The running daemon's pid, in its state directory: `uplink pair` signals it (SIGHUP) to reload.
PID_FILE = "bridge.pid"

RIGHTS = ("pay", "read", "refund", "resolve", "admin")
DEFAULT_RIGHTS = ("pay", "read")


@dataclass(frozen=True)
class Problem:
    where: str  # "file [section] key"
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


class ConfigError(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


@dataclass(frozen=True)
class ClientConfig:
    name: str
    id: str
    secret_in: str = field(repr=False)
    secret_out: str = field(repr=False)
    algorithm: str = "sha256"
    rights: frozenset[str] = frozenset(DEFAULT_RIGHTS)


@dataclass(frozen=True)
class TerminalConfig:
    name: str
    type: str
    options: Mapping[str, str]


@dataclass(frozen=True)
class BridgeConfig:
    path: str
    name: str
    listen_host: str
    listen_port: int
    state_dir: str
    tls_certificate: str
    tls_key: str
    clients_file: str
    max_message_bytes: int
    clock_skew: float
    messages_per_second: float
    max_connections: int
    log_level: str
    retention_days: float
    clients: Mapping[str, ClientConfig]
    terminals: Mapping[str, TerminalConfig]
    uplinks: Mapping[str, UplinkConfig] = field(default_factory=dict)
    status: Optional[StatusConfig] = None
    #: The CPU the daemon keeps its threads on (bridge/service/cpu.py): CPU_AUTO, CPU_ALL or a CPU's number.
    cpu: "CpuSetting" = "auto"

    @property
    def journal_path(self) -> str:
        return os.path.join(self.state_dir, "journal.sqlite3")

    @property
    def pid_path(self) -> str:
        return os.path.join(self.state_dir, PID_FILE)

    def client_by_id(self, client_id: object) -> Optional[ClientConfig]:
        for client in self.clients.values():
            if client.id == client_id:
                return client
        return None


# Terminal types and the function that checks a [terminal:NAME] section's keys: it returns problems as
# (key, message).  Filled by bridge.terminals.catalogue so this module stays free of driver imports.
TerminalValidator = Callable[[Mapping[str, str]], list[tuple[str, str]]]


CPU_AUTO = "auto"
CPU_ALL = "all"
#: ``[bridge] cpu`` once checked: CPU_AUTO, CPU_ALL, or a CPU's number.
CpuSetting = Union[str, int]


def parse_cpu_setting(raw: str) -> tuple[CpuSetting, Optional[str]]:
    """``[bridge] cpu`` as written: the setting, and the problem to report (None when it is fine)."""
    value = raw.strip().lower()
    if value in ("", CPU_AUTO):
        return CPU_AUTO, None
    if value == CPU_ALL:
        return CPU_ALL, None
    if value.isdigit() and int(value) < 4096:
        return int(value), None
    return CPU_AUTO, "must be auto, all or a CPU's number (0, 1, ...)"


def load(path: str, terminal_types: Mapping[str, TerminalValidator]) -> BridgeConfig:
    """Read and check the configuration at ``path``; raise :class:`ConfigError` listing every problem."""
    problems: list[Problem] = []
    parser = _read(path, problems)
    if parser is None:
        raise ConfigError(problems)

    def where(section: str, key: Optional[str] = None) -> str:
        return f"{path} [{section}]" + (f" {key}" if key else "")

    bridge: Mapping[str, str] = {}
    if parser.has_section("bridge"):
        bridge = parser["bridge"]
    known_bridge_keys = {"name", "listen", "state_dir", "tls_certificate", "tls_key", "clients_file",
                         "max_message_bytes", "clock_skew", "messages_per_second", "max_connections", "log_level",
                         "retention_days", "cpu"}
    for key in bridge:
        if key not in known_bridge_keys:
            problems.append(Problem(where("bridge", key), "unknown setting (check the spelling)"))

    listen = bridge.get("listen", f"0.0.0.0:{DEFAULT_PORT}")
    host, port = _host_port(listen, DEFAULT_PORT)
    if port is None:
        problems.append(Problem(where("bridge", "listen"), f"{listen!r} is not HOST:PORT with a port 0-65535"))
        port = DEFAULT_PORT
    state_dir = bridge.get("state_dir", DEFAULT_STATE_DIR) or DEFAULT_STATE_DIR
    base = os.path.dirname(os.path.abspath(path))
    state_dir = os.path.join(base, state_dir)
    cert = bridge.get("tls_certificate", "") or os.path.join(state_dir, "tls", "bridge.crt")
    key = bridge.get("tls_key", "") or os.path.join(state_dir, "tls", "bridge.key")
    if bool(bridge.get("tls_certificate")) != bool(bridge.get("tls_key")):
        problems.append(Problem(where("bridge", "tls_key"),
                                "set both tls_certificate and tls_key, or neither (to use a generated one)"))
    for k in ("tls_certificate", "tls_key"):
        if bridge.get(k) and not os.path.exists(os.path.join(base, bridge[k])):
            problems.append(Problem(where("bridge", k), f"the file {bridge[k]} does not exist"))
    clients_file = os.path.join(base, bridge.get("clients_file", "") or "clients.conf")

    def number(key: str, default: float, minimum: float, maximum: float, integer: bool = False) -> Any:
        raw = bridge.get(key)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw) if integer else float(raw)
        except ValueError:
            problems.append(Problem(where("bridge", key), f"{raw!r} is not a number"))
            return default
        if not minimum <= value <= maximum:
            problems.append(Problem(where("bridge", key), f"must be between {minimum} and {maximum}"))
            return default
        return value

    max_message = number("max_message_bytes", 65536, 1024, 1048576, integer=True)
    skew = number("clock_skew", 120, 5, 3600)
    rate = number("messages_per_second", 50, 1, 10000)
    max_connections = number("max_connections", 64, 1, 10000, integer=True)
    retention_days = number("retention_days", 90, 1, 3650)
    cpu, cpu_problem = parse_cpu_setting(bridge.get("cpu", ""))
    if cpu_problem is not None:
        problems.append(Problem(where("bridge", "cpu"), cpu_problem))
    log_level = bridge.get("log_level", "info") or "info"
    if log_level not in ("debug", "info", "warn", "error"):
        problems.append(Problem(where("bridge", "log_level"), "must be debug, info, warn or error"))

    terminals: dict[str, TerminalConfig] = {}
    uplinks: dict[str, UplinkConfig] = {}
    status: Optional[StatusConfig] = None
    for section in parser.sections():
        if section == "bridge":
            continue
        if section == "status":
            status, found = parse_status(dict(parser[section]), state_dir, _host_port)
            problems.extend(Problem(where(section, key), message) for key, message in found)
            continue
        kind, _, name = section.partition(":")
        if kind == "uplink" and name:
            uplink, found = parse_uplink(name, dict(parser[section]), base)
            problems.extend(Problem(where(section, key or None), message) for key, message in found)
            if uplink is not None:
                uplinks[name] = uplink
            continue
        if kind != "terminal" or not name:
            problems.append(Problem(where(section), "unknown section; expected [bridge], [terminal:NAME] or "
                                                    "[uplink:NAME]"))
            continue
        options = dict(parser[section])
        # Relative paths are taken from this file's directory, like the [bridge] ones.
        options.update({k: os.path.join(base, v) for k, v in options.items() if k.endswith("_file") and v})
        ttype = options.get("type", "")
        if ttype not in terminal_types:
            known = ", ".join(sorted(terminal_types))
            problems.append(Problem(where(section, "type"), f"{ttype!r} is not a terminal type ({known})"))
            continue
        for key, message in terminal_types[ttype](options):
            problems.append(Problem(where(section, key), message))
        terminals[name] = TerminalConfig(name, ttype, options)

    clients = load_clients(clients_file, problems)
    problems.extend(Problem(where(f"uplink:{name}", key), message)
                    for name, key, message in check_clients(uplinks, clients))
    if problems:
        raise ConfigError(problems)
    return BridgeConfig(
        path=path, name=bridge.get("name", "") or os.uname().nodename, listen_host=host, listen_port=port,
        state_dir=state_dir, tls_certificate=os.path.join(base, cert), tls_key=os.path.join(base, key),
        clients_file=clients_file, max_message_bytes=max_message, clock_skew=skew, messages_per_second=rate,
        max_connections=max_connections, log_level=log_level, retention_days=retention_days, cpu=cpu, clients=clients, terminals=terminals,
        uplinks=uplinks, status=status,
    )


def load_clients(path: str, problems: list[Problem]) -> dict[str, ClientConfig]:
    """The clients file; a missing one means no clients yet (``client add`` creates it)."""
    if not os.path.exists(path):
        return {}
    parser = _read(path, problems)
    if parser is None:
        return {}
    mode = os.stat(path).st_mode & 0o777
    if mode & 0o077:
        problems.append(Problem(path, f"holds secrets but is readable by others (mode {mode:o}); "
                                      f"run: chmod 600 {path}"))
    clients: dict[str, ClientConfig] = {}
    seen_ids: set[str] = set()
    for section in parser.sections():
        kind, _, name = section.partition(":")
        where = f"{path} [{section}]"
        if kind != "client" or not name:
            problems.append(Problem(where, "unknown section; expected [client:NAME]"))
            continue
        s = parser[section]
        client_id = s.get("id", "")
        if not client_id:
            problems.append(Problem(where + " id", "missing"))
        elif client_id in seen_ids:
            problems.append(Problem(where + " id", "the same id is used by another client"))
        seen_ids.add(client_id)
        for key in ("secret_in", "secret_out"):
            if len(s.get(key, "").encode()) < MIN_SECRET_BYTES:
                problems.append(Problem(f"{where} {key}", f"must be at least {MIN_SECRET_BYTES} characters "
                                                          "(use 'terminal-bridge client add' to make one)"))
        if s.get("secret_in") and s.get("secret_in") == s.get("secret_out"):
            problems.append(Problem(where + " secret_out", "must differ from secret_in"))
        algorithm = s.get("algorithm", "sha256")
        if algorithm in REFUSED_ALGORITHMS or algorithm not in ALGORITHMS:
            problems.append(Problem(where + " algorithm", f"{algorithm!r} is not allowed; use sha256 or sha512"))
        rights = frozenset(r.strip() for r in s.get("rights", ",".join(DEFAULT_RIGHTS)).split(",") if r.strip())
        for right in rights - set(RIGHTS):
            problems.append(Problem(where + " rights", f"{right!r} is not a right ({', '.join(RIGHTS)})"))
        clients[name] = ClientConfig(name, client_id, s.get("secret_in", ""), s.get("secret_out", ""),
                                     algorithm, rights)
    return clients


def _read(path: str, problems: list[Problem]) -> Optional[configparser.ConfigParser]:
    parser = configparser.ConfigParser(interpolation=None, default_section="__no_defaults__")
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f, source=path)
    except FileNotFoundError:
        problems.append(Problem(path, "the file does not exist (use --config to name another)"))
        return None
    except PermissionError:
        problems.append(Problem(path, "cannot be read: permission denied"))
        return None
    except (configparser.Error, UnicodeDecodeError) as e:
        problems.append(Problem(path, f"is not a valid INI file: {e}"))
        return None
    return parser


def _host_port(text: str, default_port: int) -> tuple[str, Optional[int]]:
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.lstrip(":")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    if not port_text:
        return host or "0.0.0.0", default_port
    if not port_text.isdigit() or not 0 <= int(port_text) < 65536:  # 0: any free port (tests)
        return host, None
    return host or "0.0.0.0", int(port_text)


def add_client(path: str, name: str, client_id: str, secret_in: str, secret_out: str,
               rights: tuple[str, ...] = DEFAULT_RIGHTS, algorithm: str = "sha256",
               owner: Optional[tuple[int, int]] = None, replace: bool = False) -> None:
    """Append a client to the clients file, creating it with mode 0600 (owned by ``owner`` if given: the
    account the bridge runs as must be able to read it).  ``replace``: a client of that name is replaced (pairing
    again), else it is an error."""
    parser = configparser.ConfigParser(interpolation=None, default_section="__no_defaults__")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            parser.read_file(f, source=path)
    section = f"client:{name}"
    if parser.has_section(section) and not replace:
        raise ValueError(f"a client named {name!r} already exists in {path}")
    parser.remove_section(section)
    parser[section] = {"id": client_id, "secret_in": secret_in, "secret_out": secret_out,
                       "algorithm": algorithm, "rights": ",".join(rights)}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("# terminal-bridge clients: secrets, keep this file mode 0600.\n")
        parser.write(f)
        f.flush()
        os.fsync(f.fileno())
    if owner is not None:
        os.chown(tmp, *owner)
    os.replace(tmp, path)
