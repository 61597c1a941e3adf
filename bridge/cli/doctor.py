"""`terminal-bridge doctor`: check an installation and say, in plain words, what to fix.

One line per check: ``OK``, ``WARN`` (works, but look at it) or ``FAIL`` (the bridge will not work like this),
each with the fix.  Exit status 1 when any check fails, 0 otherwise.

The checks read and never write: the journal is opened read-only, a terminal gets a TCP connection that is
closed at once, a serial device is opened and closed without a byte sent, Stripe is asked for the reader (a read,
never a payment).  This is a command, not the daemon, so it blocks; every network wait is short (``--timeout``).

Files are also checked for the account the service runs as: the owner of the state directory (the .deb's
``_terminal-bridge``), the same account `client add` gives the clients file to.

Terminal checks are per type: :data:`TERMINAL_CHECKS` has one for each type of
:mod:`bridge.terminals.catalogue`, called as ``check(options, context)`` with the section's options and a
:class:`Context`; it returns ``[(level, text)]``.
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import grp
import os
import pwd
import re
import socket
import stat
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

from bridge.config import BridgeConfig, ConfigError, load

OK, WARN, FAIL = "OK", "WARN", "FAIL"

#: Warn when the certificate ends within this many days.
EXPIRY_WARNING_DAYS = 30
#: Free space under the state directory below which the journal is in danger.
DISK_FAIL_BYTES = 10 * 1024 * 1024
DISK_WARN_BYTES = 100 * 1024 * 1024

Line = tuple[str, str]  # (level, text)


@dataclass(frozen=True)
class Account:
    """A user and its groups, to tell whether it may read, write or open a file."""

    name: str
    uid: int
    gids: frozenset[int]

    @classmethod
    def of_uid(cls, uid: int) -> "Account":
        try:
            entry = pwd.getpwuid(uid)
        except KeyError:
            return cls(str(uid), uid, frozenset())
        return cls(entry.pw_name, uid, frozenset(os.getgrouplist(entry.pw_name, entry.pw_gid)))

    @classmethod
    def running_the_service(cls, state_dir: str) -> "Account":
        """The owner of the state directory; the current user when there is none yet."""
        try:
            return cls.of_uid(os.stat(state_dir).st_uid)
        except OSError:
            return cls.of_uid(os.geteuid())

    def can(self, path: str, mode: int) -> bool:
        """Whether this account may access ``path`` with ``mode`` (os.R_OK | os.W_OK), directories included.

        POSIX permission bits only (no ACLs), like `ls -l` shows them.
        """
        if self.uid == 0:
            return True
        path = os.path.abspath(path)
        parent = os.path.dirname(path)
        while True:
            if not self._allowed(parent, os.X_OK):
                return False
            if parent == os.path.dirname(parent):
                break
            parent = os.path.dirname(parent)
        return self._allowed(path, mode)

    def _allowed(self, path: str, mode: int) -> bool:
        try:
            st = os.stat(path)
        except OSError:
            return False
        if st.st_uid == self.uid:
            shift = 6
        elif st.st_gid in self.gids:
            shift = 3
        else:
            shift = 0
        bits = (st.st_mode >> shift) & 0o7
        return bits & mode == mode


@dataclass(frozen=True)
class Context:
    """What a terminal check gets besides the terminal's options."""

    timeout: float
    account: Account


TerminalCheck = Callable[[Mapping[str, str], Context], list[Line]]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "doctor", help="check the installation and say what to fix",
        description="Check the configuration, the clients file, the TLS certificate, the journal and every "
                    "terminal (can it be reached?), and print one line per check: OK, WARN or FAIL, with what "
                    "to do. Nothing is changed. Run it as root to check the files of the service's account. "
                    "Exit status 0 when nothing failed, 1 otherwise.")
    p.add_argument("--timeout", type=float, default=3.0, metavar="SECONDS",
                   help="seconds to wait for each terminal (default: %(default)s)")
    p.set_defaults(handler=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    lines = diagnose(args.config, timeout=max(0.1, args.timeout))
    for level, text in lines:
        print(f"{level:<4}  {text}")
    failed = sum(1 for level, _ in lines if level == FAIL)
    warned = sum(1 for level, _ in lines if level == WARN)
    if failed:
        print(f"{failed} problem(s) to fix (the FAIL lines above); then run `terminal-bridge doctor` again.")
    elif warned:
        print(f"Nothing failed; {warned} warning(s) to read.")
    else:
        print("All checks passed.")
    return 1 if failed else 0


def diagnose(config_path: str, timeout: float = 3.0) -> list[Line]:
    """Every check's line, in order: config, clients file, certificate, journal, terminals."""
    from bridge.terminals.catalogue import VALIDATORS

    try:
        config = load(config_path, VALIDATORS)
    except ConfigError as e:
        lines = [(FAIL, f"config: {problem}") for problem in e.problems]
        if any("permission denied" in p.message for p in e.problems) and os.geteuid() != 0:
            lines.append((WARN, "config: some files could not be read as this user; "
                                "run `sudo terminal-bridge doctor`."))
        return lines + [(WARN, "config: the other checks wait for a valid configuration; fix the lines above "
                               "(`terminal-bridge check-config` lists the same problems).")]
    account = Account.running_the_service(config.state_dir)
    lines = [(OK, f"config: {os.path.abspath(config.path)} is valid: {len(config.terminals)} terminal(s), "
                  f"{len(config.clients)} client(s), listening on {config.listen_host}:{config.listen_port}; "
                  f"the service runs as {account.name}.")]
    lines += check_readable_by_service(config.path, "config", account)
    lines += check_clients_file(config, account)
    lines += check_certificate(config, account)
    lines += check_journal(config, account)
    lines += check_terminals(config, Context(timeout, account))
    return lines


# -- files ----------------------------------------------------------------------------------------

def check_readable_by_service(path: str, topic: str, account: Account) -> list[Line]:
    if account.can(path, os.R_OK):
        return []
    return [(FAIL, f"{topic}: the service's account {account.name} cannot read {path} ({_owner_and_mode(path)}). "
                   f"Fix: chown {account.name}: {path}  (or give it read access)")]


def check_clients_file(config: BridgeConfig, account: Account) -> list[Line]:
    path = config.clients_file
    if not os.path.exists(path):
        return [(WARN, f"clients: no clients yet ({path} does not exist), so nobody can send payments. "
                       "Fix: terminal-bridge client add NAME")]
    problems = check_readable_by_service(path, "clients", account)
    if problems:
        return problems
    return [(OK, f"clients: {path} holds {len(config.clients)} client(s) and the service can read it "
                 f"({_owner_and_mode(path)}).")]


def check_certificate(config: BridgeConfig, account: Account) -> list[Line]:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from bridge.api.tls import fingerprint_of_pem

    cert_path, key_path = config.tls_certificate, config.tls_key
    generated = cert_path == os.path.join(config.state_dir, "tls", "bridge.crt")
    remake = (f"stop the bridge, delete {cert_path} and {key_path}, start it again (it makes new ones) and "
              "give clients the new fingerprint") if generated else "configure a matching certificate and key"
    if not os.path.exists(cert_path) and not os.path.exists(key_path) and generated:
        return [(OK, "certificate: none yet; the bridge makes its key and a self-signed certificate at its first "
                     "start and logs the fingerprint (journalctl -u terminal-bridge | grep fingerprint).")]
    lines: list[Line] = []
    data = {}
    for what, path in (("certificate", cert_path), ("key", key_path)):
        try:
            with open(path, "rb") as f:
                data[what] = f.read()
        except FileNotFoundError:
            if generated:  # the bridge makes both again when one is missing
                return [(WARN, f"certificate: the {what} {path} is missing; at its next start the bridge makes a "
                               "new key and certificate, whose new fingerprint every client must be given.")]
            return [(FAIL, f"certificate: the {what} {path} is missing. Fix: {remake}.")]
        except PermissionError:
            return [(WARN, f"certificate: cannot read the {what} {path} as this user. "
                           "Fix: run `sudo terminal-bridge doctor` to check it.")]
        lines += check_readable_by_service(path, "certificate", account)
    try:
        cert = x509.load_pem_x509_certificate(data["certificate"])
        fingerprint = fingerprint_of_pem(data["certificate"])
    except ValueError:
        return [(FAIL, f"certificate: {cert_path} is not a PEM certificate. Fix: {remake}.")]
    try:
        key = serialization.load_pem_private_key(data["key"], password=None)
    except (ValueError, TypeError):
        return [(FAIL, f"certificate: {key_path} is not an unencrypted PEM private key. Fix: {remake}.")]
    public = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*public) != cert.public_key().public_bytes(*public):
        return [(FAIL, f"certificate: the key {key_path} does not belong to the certificate {cert_path}. "
                       f"Fix: {remake}.")]
    now = datetime.datetime.now(datetime.timezone.utc)
    not_before, not_after = _validity(cert)
    if not_after <= now:
        return [(FAIL, f"certificate: expired on {not_after:%Y-%m-%d}; clients will refuse it. Fix: {remake}.")]
    if not_before > now:
        return [(FAIL, f"certificate: not valid before {not_before:%Y-%m-%d %H:%M} UTC: is this machine's clock "
                       "right? Fix: timedatectl set-ntp true")]
    days = (not_after - now).days
    if days < EXPIRY_WARNING_DAYS:
        lines.append((WARN, f"certificate: expires in {days} day(s), on {not_after:%Y-%m-%d}. Fix: {remake}."))
    else:
        lines.append((OK, f"certificate: the key matches, valid until {not_after:%Y-%m-%d}; SHA-256 fingerprint "
                          f"{fingerprint}"))
    return lines


def _validity(cert) -> tuple[datetime.datetime, datetime.datetime]:
    # cryptography 42 added the aware *_utc properties and deprecated the naive ones (bookworm has 38).
    if hasattr(cert, "not_valid_after_utc"):
        return cert.not_valid_before_utc, cert.not_valid_after_utc
    utc = datetime.timezone.utc
    return cert.not_valid_before.replace(tzinfo=utc), cert.not_valid_after.replace(tzinfo=utc)


def check_journal(config: BridgeConfig, account: Account) -> list[Line]:
    from bridge.core.journal import SCHEMA_VERSION

    lines = check_disk(config.state_dir)
    path = config.journal_path
    if not os.path.exists(path):
        directory = config.state_dir if os.path.isdir(config.state_dir) else os.path.dirname(config.state_dir)
        if os.path.exists(directory) and not account.can(directory, os.W_OK | os.X_OK):
            return lines + [(FAIL, f"journal: the service's account {account.name} cannot create files in "
                                   f"{directory} ({_owner_and_mode(directory)}). "
                                   f"Fix: chown {account.name}: {directory}")]
        return lines + [(OK, f"journal: none yet; the bridge creates {path} at its first start.")]
    for name in (path, path + "-wal", path + "-shm"):
        if os.path.exists(name) and not account.can(name, os.R_OK | os.W_OK):
            lines.append((FAIL, f"journal: the service's account {account.name} cannot write {name} "
                                f"({_owner_and_mode(name)}); was the bridge run by hand as another user? "
                                f"Fix: chown {account.name}: {name}"))
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as e:
        return lines + [(FAIL, f"journal: {path} cannot be opened ({e}).")]
    damaged = (f"journal: {path} is damaged. Fix: stop the bridge, copy {path}* somewhere safe (it holds the "
               "payments), move the file aside and start the bridge, which begins a new journal; ask for help "
               "to recover the payments of the old one")
    try:
        check = conn.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            return lines + [(FAIL, f"{damaged} ({check}).")]
        row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        unknown = conn.execute("SELECT count(*) FROM payments WHERE state='unknown'").fetchone()[0]
    except sqlite3.OperationalError as e:
        if "unable to open" in str(e) or "readonly" in str(e):
            return lines + [(WARN, f"journal: cannot read {path} as this user ({e}). "
                                   "Fix: run `sudo terminal-bridge doctor` to check it.")]
        return lines + [(FAIL, f"{damaged} ({e}).")]
    except sqlite3.DatabaseError as e:
        return lines + [(FAIL, f"{damaged} ({e}).")]
    finally:
        conn.close()
    version = int(row[0]) if row else 0
    if version > SCHEMA_VERSION:
        return lines + [(FAIL, f"journal: written by a newer terminal-bridge (schema {version}; this one knows "
                               f"{SCHEMA_VERSION}). Fix: install that newer version again.")]
    lines.append((OK, f"journal: {path} is intact (schema {version}).")
                 if version == SCHEMA_VERSION else
                 (OK, f"journal: {path} is intact (schema {version}; brought to {SCHEMA_VERSION} at the next "
                      "start)."))
    if unknown:
        lines.append((WARN, f"journal: {unknown} payment(s) have an unknown outcome and wait for someone to "
                            "resolve them. See them with: terminal-bridge payments --state unknown"))
    return lines


def check_disk(state_dir: str) -> list[Line]:
    directory = state_dir
    while not os.path.exists(directory) and directory != os.path.dirname(directory):
        directory = os.path.dirname(directory)
    try:
        st = os.statvfs(directory)
    except OSError as e:
        return [(WARN, f"disk: cannot tell the free space under {state_dir} ({e.strerror}).")]
    free = st.f_bavail * st.f_frsize
    text = f"disk: {_size(free)} free under {state_dir}"
    if free < DISK_FAIL_BYTES:
        return [(FAIL, f"{text}: the bridge refuses payments when it cannot record them. "
                       "Fix: free some space (e.g. journalctl --vacuum-size=100M, apt-get clean).")]
    if free < DISK_WARN_BYTES:
        return [(WARN, f"{text}: free some space soon (e.g. journalctl --vacuum-size=100M, apt-get clean).")]
    return [(OK, text + ".")]


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError


def _owner_and_mode(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError as e:
        return e.strerror or str(e)
    return f"owner {_user_name(st.st_uid)}:{_group_name(st.st_gid)}, mode {stat.S_IMODE(st.st_mode):o}"


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


# -- terminals ------------------------------------------------------------------------------------

def check_terminals(config: BridgeConfig, context: Context) -> list[Line]:
    if not config.terminals:
        return [(WARN, "terminals: none configured. Fix: add a [terminal:NAME] section to "
                       f"{config.path} (the file shows examples).")]
    terminals = list(config.terminals.values())
    # In parallel: a shop's tens of terminals, each up to `timeout` seconds when it does not answer.
    with ThreadPoolExecutor(max_workers=min(8, len(terminals))) as pool:
        results = list(pool.map(lambda t: _check_terminal(t.type, t.options, context), terminals))
    lines: list[Line] = []
    for terminal, found in zip(terminals, results):
        lines += [(level, f"terminal {terminal.name} ({terminal.type}): {text}") for level, text in found]
    return lines


def _check_terminal(kind: str, options: Mapping[str, str], context: Context) -> list[Line]:
    check = terminal_check(kind)
    if check is None:
        return [(WARN, "the doctor has no check for this type of terminal; try a test payment "
                       "(terminal-bridge pay).")]
    try:
        return list(check(options, context))
    except Exception as e:  # a broken check must not hide the other checks' lines
        return [(WARN, f"the check itself failed ({e!r}).")]


def terminal_check(kind: str) -> Optional[TerminalCheck]:
    """This module's check for a terminal type, or None."""
    return TERMINAL_CHECKS.get(kind)


def check_caisse_ap_tcp(options: Mapping[str, str], context: Context) -> list[Line]:
    from bridge.terminals.caisse_ap.tcp import parse_tcp_options

    kwargs, problems = parse_tcp_options(options)
    if problems:
        return [(FAIL, f"{key} {message}") for key, message in problems]
    host, port = kwargs["host"], kwargs["port"]
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    timeout = min(context.timeout, kwargs.get("connect_timeout", context.timeout))
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except socket.timeout:
        return [(FAIL, f"no answer from {address} within {timeout:g} s. Fix: check that the terminal is on, "
                       "connected to the shop's network, and that its IP address is still "
                       f"{host} (a DHCP lease may have changed it: give the terminal a fixed address).")]
    except ConnectionRefusedError:
        return [(FAIL, f"{address} refused the connection: a device answers at {host} but nothing listens on "
                       f"port {port}. Fix: check the port and that the terminal's Caisse-AP over IP mode is on "
                       "(if a payment is running on it, try again when it is done).")]
    except OSError as e:
        return [(FAIL, f"cannot reach {address} ({e.strerror or e}). Fix: check the address, the network "
                       "cable and any firewall between this machine and the terminal.")]
    return [(OK, f"answers at {address}.")]


_SANDBOX_DEVICE = re.compile(r"tty(USB|ACM)[0-9]+\Z")


def check_caisse_ap_serial(options: Mapping[str, str], context: Context) -> list[Line]:
    device = options.get("device", "").strip()
    if not device:
        return [(FAIL, "no device setting. Fix: set device = /dev/serial/by-id/... (ls -l /dev/serial/by-id/ "
                       "lists the serial devices plugged in).")]
    if not os.path.exists(device):
        return [(FAIL, f"{device} does not exist. Fix: check the USB cable and that the terminal is on; "
                       "ls -l /dev/serial/by-id/ lists the serial devices plugged in.")]
    if not stat.S_ISCHR(os.stat(device).st_mode):
        return [(FAIL, f"{device} is not a serial device. Fix: set device to the terminal's port, e.g. "
                       "/dev/ttyUSB0 or a name under /dev/serial/by-id/.")]
    lines: list[Line] = []
    try:
        fd = os.open(device, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
    except PermissionError:
        lines.append((FAIL, f"{device} cannot be opened by this user ({_owner_and_mode(device)}). Fix: run "
                            "`sudo terminal-bridge doctor`, or add the user to the device's group."))
    except OSError as e:
        return [(FAIL, f"{device} cannot be opened ({e.strerror or e}). Fix: unplug and plug the cable again, "
                       "or restart the terminal.")]
    else:
        try:
            # pyserial's exclusive=True takes the same lock: a taken lock means another program holds the port.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lines.append((WARN, f"{device} is in use by another program (the bridge itself, if it is running: "
                                "then all is well; otherwise find it with: fuser -v " + device + ")."))
        else:
            lines.append((OK, f"{device} is present and can be opened."))
        finally:
            os.close(fd)
    account = context.account
    if not account.can(device, os.R_OK | os.W_OK):
        group = _group_name(os.stat(device).st_gid)
        lines.append((FAIL, f"the service's account {account.name} may not open {device} "
                            f"({_owner_and_mode(device)}). Fix: usermod -aG {group} {account.name}, then "
                            "systemctl restart terminal-bridge"))
    real = os.path.realpath(device)
    if not _SANDBOX_DEVICE.match(os.path.basename(real)):
        lines.append((WARN, f"{device} is {real}: the service's sandbox only opens /dev/ttyUSB* and "
                            f"/dev/ttyACM*. Fix: systemctl edit terminal-bridge, add under [Service] the line "
                            f"DeviceAllow={real} rw"))
    return lines


#: The unit and its drop-ins, where a Stripe key given as a systemd credential (LoadCredential=) is named.
UNIT_FILES = ("/lib/systemd/system/terminal-bridge.service", "/etc/systemd/system/terminal-bridge.service",
              "/etc/systemd/system/terminal-bridge.service.d")


def check_stripe(options: Mapping[str, str], context: Context) -> list[Line]:
    """The key (its file, its kind), then whether Stripe takes it and knows the reader."""
    path = options.get("api_key_file", "").strip()
    credential = options.get("api_key_credential", "").strip()
    if credential:
        path = _credential_source(credential) or ""
        if not path.startswith("/"):
            return [(FAIL, f"the key is the systemd credential {credential}, but the unit has no "
                           f"LoadCredential={credential}:/PATH line. Fix: systemctl edit terminal-bridge, add under "
                           f"[Service] the line LoadCredential={credential}:/etc/terminal-bridge/{credential} and "
                           "put the key in that file (root, mode 600)")]
    elif not path:
        return [(WARN, "neither api_key_file nor api_key_credential is set; nothing to check.")]
    try:
        with open(path, encoding="utf-8") as f:
            key = f.read().strip()
    except FileNotFoundError:
        return [(FAIL, f"the key file {path} does not exist. Fix: put the Stripe key in it (mode 600).")]
    except PermissionError:
        return [(WARN, f"cannot read the key file {path} as this user. Fix: run `sudo terminal-bridge doctor`.")]
    except (OSError, UnicodeDecodeError) as e:
        return [(FAIL, f"the key file {path} cannot be read ({e}).")]
    # systemd reads a credential's file as root; a plain key file is read by the service's account.
    lines = [] if credential else check_readable_by_service(path, "key file", context.account)
    prefix = key[:8]
    if key.startswith("pk_"):
        lines.append((FAIL, f"{path} holds a publishable key ({prefix}...); the bridge needs a restricted key "
                            "(rk_...) with Terminal and PaymentIntents rights."))
    elif key.startswith("sk_live_"):
        lines.append((WARN, f"{path} holds a full secret key ({prefix}...). Fix: create a restricted key "
                            "(rk_live_...) with Terminal and PaymentIntents rights and use it instead."))
    elif not key.startswith(("rk_", "sk_")) or any(c.isspace() for c in key):
        lines.append((FAIL, f"{path} does not hold a Stripe API key (they start with rk_ or sk_)."))
    if any(level == FAIL for level, _ in lines):
        return lines
    return lines + _ask_stripe(options, key, context)


def _ask_stripe(options: Mapping[str, str], key: str, context: Context) -> list[Line]:
    """Whether Stripe takes the key and knows the reader: one read, no payment."""
    from bridge.terminals.stripe.api import StripeAPI, StripeCallError, path as api_path
    from bridge.terminals.stripe.options import parse_stripe_options

    settings, _ = parse_stripe_options(options)
    mode = "test mode" if "_test_" in key[:8] else "live mode"
    # Stripe is across the internet: a little more time than a terminal on the LAN.
    api = StripeAPI(None, key, api_base=settings["api_base"], api_version=settings["api_version"],
                    timeout=max(context.timeout, 5.0))
    try:
        if settings["reader_id"]:
            reader = api.call_blocking("get", api_path("/v1/terminal/readers/{}", settings["reader_id"]))
        else:
            found = api.call_blocking("get", "/v1/terminal/readers",
                                      {"serial_number": settings["serial_number"], "limit": 1}).get("data") or []
            if not found:
                return [(FAIL, f"Stripe takes the key ({mode}) but has no reader with serial number "
                               f"{settings['serial_number']} in this account. Fix: register it "
                               "(terminal-bridge stripe register) or correct serial_number.")]
            reader = found[0]
    except StripeCallError as e:
        words = {
            "stripe_auth_failed": "Stripe refuses the key (revoked, rolled or mistyped). Fix: create a new "
                                  "restricted key in the Stripe Dashboard and put it in the key file.",
            "stripe_permission_denied": "the key may not read Terminal readers. Fix: give the restricted key "
                                        "write rights on Terminal and PaymentIntents in the Stripe Dashboard.",
            "stripe_unreachable": f"cannot reach Stripe at {settings['api_base']}. Fix: check this machine's "
                                  "internet connection, DNS and that HTTPS (port 443) out is allowed.",
            "stripe_not_found": f"Stripe takes the key ({mode}) but has no reader {settings['reader_id']} in this "
                                "account (test and live mode readers are apart). Fix: correct reader.",
        }
        return [(FAIL, words.get(e.code, f"Stripe answered {e.code}: {e.stripe_message or e.message}"))]
    name = f"reader {reader.get('id')} ({reader.get('label') or reader.get('device_type') or 'no label'})"
    if reader.get("status") == "offline":
        return [(WARN, f"Stripe takes the key ({mode}); {name} is offline. Fix: check that the reader is on and "
                       "on a network with internet access.")]
    return [(OK, f"Stripe takes the key ({mode}); {name} is {reader.get('status') or 'known'}.")]


def _credential_source(name: str) -> Optional[str]:
    """The file of ``LoadCredential=name:FILE`` in the unit or its drop-ins (the last one wins), or None."""
    files: list[str] = []
    for place in UNIT_FILES:
        if os.path.isdir(place):
            files += sorted(os.path.join(place, f) for f in os.listdir(place) if f.endswith(".conf"))
        elif os.path.isfile(place):
            files.append(place)
    found = None
    for unit in files:
        try:
            with open(unit, encoding="utf-8") as f:
                for line in f:
                    key, _, value = line.strip().partition("=")
                    if key.strip() == "LoadCredential" and value.strip().startswith(name + ":"):
                        found = value.strip()[len(name) + 1:]
        except (OSError, UnicodeDecodeError):
            continue
    return found


#: The check of each terminal type (a new type adds its line here).
TERMINAL_CHECKS: dict[str, TerminalCheck] = {
    "caisse-ap-tcp": check_caisse_ap_tcp,
    "caisse-ap-serial": check_caisse_ap_serial,
    "stripe": check_stripe,
}
