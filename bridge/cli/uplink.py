"""`terminal-bridge uplink status`: each cloud uplink's link, its last error and the feedback still waiting.

The daemon writes each uplink's status to STATE_DIR/uplink/NAME.status.json when it changes; this command reads
those files and counts the undelivered feedback in the journal itself (read-only, safe beside the daemon).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime, timezone
from typing import Any, Optional

from bridge.config import BridgeConfig, ConfigError
from bridge.core.journal import Journal
from bridge.errors import BridgeError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("uplink", help="the cloud uplinks (Odoo over its bus and HTTPS)")
    actions = p.add_subparsers(dest="uplink_command", metavar="ACTION")
    status = actions.add_parser(
        "status", help="show each uplink: connected or not, since when, last error, feedback waiting",
        description="Show each [uplink:NAME] of the configuration: whether its bus WebSocket and its HTTPS fetch "
                    "work and since when, the last error in words, and how many final payment states wait for "
                    "delivery. Exit status 0 when every uplink is connected, 1 otherwise.")
    status.add_argument("--json", action="store_true", help="print JSON (for monitoring scripts)")
    status.set_defaults(handler=cmd_uplink_status)
    p.set_defaults(handler=lambda args: (p.print_help(), 2)[1])


def cmd_uplink_status(args: argparse.Namespace) -> int:
    from bridge.cli.commands import _load_config, _report_config_error

    try:
        config = _load_config(args)
    except ConfigError as e:
        return _report_config_error(e)
    return show_status(config, as_json=args.json)


def uplink_report(config: BridgeConfig) -> list[dict[str, Any]]:
    # The uplink's modules load twisted.web's client and autobahn's: only for this command, not for every one.
    from bridge.uplink.config import resolve_client
    from bridge.uplink.feedback import waiting
    from bridge.uplink.service import read_status, status_path

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
            report["feedback_waiting"] = waiting(journal, client.id, uplink.cursor_id)
        report["connected"] = bool(report["bus"] or report["https"])
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
        waiting_count = r["feedback_waiting"]
        line = "unknown (no journal yet)" if waiting_count is None else f"{waiting_count} waiting for delivery"
        if r["feedback_error"] and waiting_count:
            line += f" - {r['feedback_error']}"
        print(f"  feedback:  {line}")
    return 0 if reports and all(r["connected"] for r in reports) else 1


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
