"""The `terminal-bridge` command."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from bridge import __version__
from bridge.cli import commands
from bridge.cli.common import resolve_handler
from bridge.config import DEFAULT_CONFIG_PATH

DESCRIPTION = """\
terminal-bridge connects a cloud or local Odoo (or any client speaking its signed WebSocket protocol) to the
payment terminals of a shop: Caisse-AP terminals over TCP or serial/USB, and Stripe Terminal readers.
"""

EPILOG = """\
Typical first steps:
  terminal-bridge check-config                 check /etc/terminal-bridge/bridge.conf
  terminal-bridge doctor                       check certificate, journal, clients and every terminal
  terminal-bridge client add pos-1 --write-credentials pos-1.json
                                               create a client and its secrets
  terminal-bridge run                          run the bridge in the foreground (systemd does this)
  terminal-bridge pay --credentials pos-1.json --terminal till-1 --amount 12.34 --currency EUR
                                               make a test payment

Documentation: /usr/share/doc/terminal-bridge/README.md, /usr/share/doc/terminal-bridge/docs/ and
`man terminal-bridge`.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="terminal-bridge", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"terminal-bridge {__version__}")
    parser.add_argument(
        "--config", "-c", metavar="PATH",
        default=os.environ.get("TERMINAL_BRIDGE_CONFIG", DEFAULT_CONFIG_PATH),
        help=f"the configuration file (default: {DEFAULT_CONFIG_PATH}, or $TERMINAL_BRIDGE_CONFIG)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.register(sub)
    _accept_global_options_after_the_command(sub)
    return parser


def _accept_global_options_after_the_command(sub: argparse._SubParsersAction) -> None:
    """`terminal-bridge payments --config demo/bridge.conf` means what `terminal-bridge --config ... payments`
    means: every command (and action) accepts --config too, and only overrides it when given."""
    for command in set(sub.choices.values()):
        command.add_argument("--config", "-c", metavar="PATH", default=argparse.SUPPRESS,
                             help="the configuration file (as before the command)")
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                _accept_global_options_after_the_command(action)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(resolve_handler(args.handler)(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
