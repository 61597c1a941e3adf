"""`terminal-bridge uplink status` and `uplink pair`: the cloud uplinks, as an installer sees them.

status: the daemon writes each uplink's status to STATE_DIR/uplink/NAME.status.json when it changes; this command
reads those files and counts the undelivered feedback in the journal itself (read-only, safe beside the daemon).
Its exit status says whether payments can flow.

pair: the one-time code exchange of docs/cloud-protocol.md ("Pairing"), the files it writes, then a reload of the
running bridge (`systemctl reload`, or SIGHUP to the pid it records in STATE_DIR/bridge.pid).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from datetime import datetime, timezone
from typing import Any, Optional

from bridge.cli.common import clients_file_and_state_dir, load_config, report_config_error
from bridge.config import PID_FILE, BridgeConfig, ConfigError
from bridge.core.journal import Journal
from bridge.errors import BridgeError
from bridge.service.reactor import global_reactor


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("uplink", help="the cloud uplinks (Odoo over its bus and HTTPS)")
    actions = p.add_subparsers(dest="uplink_command", metavar="ACTION")
    status = actions.add_parser(
        "status", help="show each uplink: connected or not, since when, last error, feedback waiting",
        description="Show each [uplink:NAME] of the configuration: whether its bus WebSocket and its HTTPS fetch "
                    "work and since when, the last error in words, and how many final payment states wait for "
                    "delivery. Exit status 0 when payments can flow through every uplink (its last fetch of "
                    "commands worked, and its bus is up or that fetch is recent), 1 otherwise.")
    status.add_argument("--json", action="store_true", help="print JSON (for monitoring scripts)")
    status.set_defaults(handler=cmd_uplink_status)
    pair = actions.add_parser(
        "pair", help="pair this bridge with a cloud Odoo by the one-time code Odoo shows",
        description="Ask Odoo for this bridge's secrets with the one-time pairing code an administrator got from "
                    "'Pair a bridge' in Odoo, write the client (clients file), the uplink's secrets file and the "
                    "[uplink:NAME] section of the configuration, then ask the running bridge to reload. Pairing "
                    "again with a new code replaces the secrets in place.",
        epilog="Exit status: 0 paired, 1 Odoo refused or could not be reached (nothing was written), "
               "2 bad arguments, 78 the configuration does not load after pairing.")
    pair.add_argument("url", metavar="URL", help="the Odoo address, e.g. https://shop.example.com")
    pair.add_argument("code", metavar="CODE", help="the pairing code Odoo shows, e.g. K7QD-M2XP-9RWT-HV4C")
    pair.add_argument("--database", required=True, metavar="DB", help="the Odoo database, as on its login page")
    pair.add_argument("--name", metavar="NAME",
                      help="the name of the uplink and of its client (default: odoo-DATABASE)")
    pair.add_argument("--ca-file", metavar="PEM",
                      help="trust only this CA or self-signed certificate for Odoo (default: the system's CAs); "
                           "also written as the uplink's ca_file")
    pair.set_defaults(handler=cmd_uplink_pair)
    p.set_defaults(handler=lambda args: (p.print_help(), 2)[1])


def cmd_uplink_status(args: argparse.Namespace) -> int:

    try:
        config = load_config(args)
    except ConfigError as e:
        return report_config_error(e)
    return show_status(config, as_json=args.json)


def cmd_uplink_pair(args: argparse.Namespace) -> int:
    from bridge.uplink.config import _check_pem
    from bridge.uplink.pairing import check_url, default_name, normalize_code, write_pairing

    try:
        url = check_url(args.url)
        code = normalize_code(args.code)
    except BridgeError as e:
        print(e.message, file=sys.stderr)
        return 2
    name = args.name or default_name(args.database)
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
        print(f"--name {name!r}: use letters, digits, '-' and '_' only (64 at most).", file=sys.stderr)
        return 2
    ca_file = os.path.abspath(args.ca_file) if args.ca_file else None
    problem = _check_pem(ca_file) if ca_file else None
    if problem:
        print(f"--ca-file: {problem}", file=sys.stderr)
        return 2
    if not os.path.isfile(args.config):
        print(f"There is no configuration at {args.config}; name it with --config.", file=sys.stderr)
        return 2
    clients_file, state_dir = clients_file_and_state_dir(args.config)
    bridge_name, fingerprint = _identity(args.config, state_dir)
    try:
        pairing = _exchange(url, args.database, code, bridge_name, fingerprint, ca_file)
    except BridgeError as e:
        print(f"Not paired: {e.message}", file=sys.stderr)
        return 1
    # Run as root (sudo), the files of secrets must still be readable by the account the bridge runs as: the
    # owner of its state directory (the .deb's _terminal-bridge), as for `client add`.
    owner = None
    if os.geteuid() == 0 and os.path.isdir(state_dir):
        st = os.stat(state_dir)
        owner = (st.st_uid, st.st_gid)
    try:
        written = write_pairing(args.config, clients_file, name, url, pairing, ca_file, owner)
    except BridgeError as e:
        print(f"Not paired: {e.message}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:
        print(f"Paired in Odoo, but the files could not be written ({e}). Fix that and pair again with a new "
              "code.", file=sys.stderr)
        return 1
    print(f"Paired with the terminal bridge {pairing.bridge!r} of Odoo (database {pairing.database}) as uplink "
          f"{name!r}.")
    print(f"  client [client:{name}] in {written.clients_file}")
    print(f"  secrets in {written.secrets_file}")
    print(f"  [uplink:{name}] {'replaced' if written.replaced else 'added'} in {written.config_file}")
    try:
        config = load_config(args)
    except ConfigError as e:
        print("The configuration does not load now, so the bridge was not asked to reload:", file=sys.stderr)
        return report_config_error(e)
    reloaded, words = ask_reload(config.state_dir)
    print(words, file=sys.stdout if reloaded else sys.stderr)
    return 0


def _identity(config_path: str, state_dir: str) -> tuple[str, Optional[str]]:
    """The bridge's name and its certificate's fingerprint (None before its first start), even when the
    configuration has other problems."""
    import configparser

    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(config_path, encoding="utf-8")
    except configparser.Error:
        pass
    name = parser.get("bridge", "name", fallback="") or os.uname().nodename
    cert = parser.get("bridge", "tls_certificate", fallback="") or os.path.join(state_dir, "tls", "bridge.crt")
    cert = os.path.join(os.path.dirname(os.path.abspath(config_path)), cert)
    try:
        from bridge.api.tls import fingerprint_of_pem

        with open(cert, "rb") as f:
            return name, fingerprint_of_pem(f.read())
    except (OSError, ValueError):
        return name, None


def _exchange(url: str, database: str, code: str, bridge_name: str, fingerprint: Optional[str],
              ca_file: Optional[str]) -> Any:
    """Run the pairing exchange on the reactor; returns the Pairing or raises BridgeError."""
    reactor = global_reactor()
    from twisted.internet.defer import inlineCallbacks

    from bridge.uplink.https import HTTPS, TLSPolicy
    from bridge.uplink.pairing import pair

    result: list[Any] = []

    @inlineCallbacks
    def main():
        https = HTTPS(reactor, TLSPolicy(ca_file), timeout=30)
        try:
            result.append((yield pair(https, url, database, code, bridge_name, fingerprint)))
        except BridgeError as e:
            result.append(BridgeError(e.code, e.message.replace("check the uplink's ca_file",
                                                                "check --ca-file (a CA or self-signed PEM)")))
        except Exception as e:  # noqa: BLE001 - whatever it is, in words, and the command ends
            result.append(BridgeError("pair_failed", f"{e.__class__.__name__}: {e}"))
        finally:
            yield https.close()
            reactor.stop()

    reactor.callWhenRunning(main)
    reactor.run()
    if result and isinstance(result[0], BridgeError):
        raise result[0]
    return result[0]


def daemon_pid(state_dir: str) -> Optional[int]:
    """The pid the running daemon recorded in STATE_DIR/bridge.pid, if that process is still a bridge."""
    try:
        with open(os.path.join(state_dir, PID_FILE), encoding="ascii") as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return None
    if not _alive(pid):
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return pid  # no /proc to check against (another system): the recorded pid is all there is
    # A pid file left by a bridge that died can name another program by now: never signal that one.
    if not any(b"bridge" in part for part in argv) or b"run" not in argv:
        return None
    return pid


def ask_reload(state_dir: str, unit: str = "terminal-bridge") -> tuple[bool, str]:
    """Ask the running bridge to re-read its configuration: `systemctl reload` when systemd runs it, else
    SIGHUP to the pid it recorded.  Returns whether it was asked, and words for the installer."""
    import signal
    import subprocess

    try:
        active = subprocess.run(["systemctl", "is-active", "--quiet", unit], timeout=15,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
    except (OSError, subprocess.SubprocessError):
        active = False
    if active:
        done: Optional[subprocess.CompletedProcess[str]]
        try:
            done = subprocess.run(["systemctl", "reload", unit], timeout=60, capture_output=True, text=True)
            why = (done.stderr or "").strip()
        except (OSError, subprocess.SubprocessError) as e:
            done, why = None, str(e)
        if done is not None and done.returncode == 0:
            return True, f"The bridge (service {unit}) was asked to reload its configuration."
        return False, (f"The bridge could not be asked to reload ({why or 'systemctl reload failed'}). Restart it "
                       f"when no payment is running: sudo systemctl restart {unit}")
    pid = daemon_pid(state_dir)
    if pid is not None:
        try:
            os.kill(pid, signal.SIGHUP)
        except PermissionError:
            return False, (f"The bridge runs (pid {pid}) but may not be signalled by this account: run "
                           f"'sudo kill -HUP {pid}', or restart the bridge, to make it read the new uplink.")
        except ProcessLookupError:
            pass
        else:
            return True, f"The bridge (pid {pid}) was asked to reload its configuration (SIGHUP)."
    return False, (f"No running bridge was found (no active {unit} service, no running bridge recorded in "
                   f"{os.path.join(state_dir, PID_FILE)}). Start it (sudo systemctl start {unit}, or "
                   "'terminal-bridge run'): it reads the new uplink when it starts.")


def uplink_report(config: BridgeConfig) -> list[dict[str, Any]]:
    # The uplink's modules load twisted.web's client and autobahn's: only for this command, not for every one.
    from bridge.uplink.config import resolve_client
    from bridge.uplink.feedback import waiting
    from bridge.uplink.service import payments_can_flow, read_status, refused_path, status_path

    journal: Optional[Journal] = None
    if os.path.exists(config.journal_path):
        try:
            journal = Journal.open_readonly(config.journal_path)
        except BridgeError:
            journal = None
    reports = []
    for uplink in config.uplinks.values():
        status = read_status(status_path(config.state_dir, uplink.name)) or {}
        running = bool(status.get("running")) and _alive(status.get("pid"))
        report: dict[str, Any] = {
            "name": uplink.name, "target": uplink.url or uplink.feedback_target, "database": uplink.database,
            "running": running, "bus": status.get("bus") if running else None,
            "bus_since": status.get("bus_since"), "https": status.get("https") if running else None,
            "https_since": status.get("https_since"), "last_error": status.get("last_error"),
            "last_error_at": status.get("last_error_at"), "feedback_error": status.get("feedback_error"),
            "updated": status.get("updated"), "feedback_waiting": None,
        }
        if journal is not None:
            client = resolve_client(uplink, config.clients)
            report["feedback_waiting"] = waiting(journal, client.id, uplink.cursor_id,
                                                 refused_path(config.state_dir, uplink.name))
        report["connected"] = bool(report["bus"] or report["https"])
        report["fetched_at"] = status.get("fetched_at")
        report["payments_can_flow"], report["why_not"] = payments_can_flow(dict(status, running=running),
                                                                           time.time(), uplink)
        reports.append(report)
    if journal is not None:
        journal.close()
    return reports


def show_status(config: BridgeConfig, as_json: bool = False) -> int:
    reports = uplink_report(config)
    if as_json:
        print(json.dumps(reports, indent=2))
    elif not reports:
        print("No uplink is configured (add an [uplink:NAME] section; see docs/cloud-protocol.md).")
    for r in reports if not as_json else []:
        print(f"{r['name']}: {r['target']}" + (f" (database {r['database']})" if r["database"] else ""))
        if not r["running"]:
            when = f" (last status {_when(r['updated'])})" if r["updated"] else ""
            print(f"  not running: the bridge is stopped or has not started this uplink yet{when}")
        else:
            if r["bus"] is not None:
                print(f"  bus:       {'connected' if r['bus'] else 'not connected'} since {_when(r['bus_since'])}")
            if r["https"] is not None:
                print(f"  commands:  {'fetched' if r['https'] else 'cannot be fetched'} since "
                      f"{_when(r['https_since'])}")
        if r["last_error"]:
            print(f"  last error: {r['last_error']} ({_when(r['last_error_at'])})")
        if r["running"]:
            print(f"  payments:  {'can flow' if r['payments_can_flow'] else 'cannot flow: ' + str(r['why_not'])}")
        waiting_count = r["feedback_waiting"]
        line = "unknown (no journal yet)" if waiting_count is None else f"{waiting_count} waiting for delivery"
        if r["feedback_error"] and waiting_count:
            line += f" - {r['feedback_error']}"
        print(f"  feedback:  {line}")
    return 0 if reports and all(r["payments_can_flow"] for r in reports) else 1


def _when(ts: Any) -> str:
    if not isinstance(ts, (int, float)):
        return "-"
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists; it runs as the bridge's own account
    return True


if __name__ == "__main__":
    sys.exit("use `terminal-bridge uplink status`")
