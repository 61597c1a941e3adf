"""`terminal-bridge status-page password`: set the status page's password (stored as an scrypt hash)."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from typing import Callable, Optional, TextIO


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status-page", help="the status page for store IT (docs/operations.md)")
    page_sub = p.add_subparsers(dest="status_page_command", metavar="ACTION")
    pw = page_sub.add_parser(
        "password", help="set the status page's password",
        description="Set the password store IT signs in to the status page with. It is stored hashed "
                    "(scrypt) in the state directory, mode 0600, and works at once, without a restart; "
                    "people signed in stay signed in until they sign out or their session ends.")
    pw.add_argument("--stdin", action="store_true",
                    help="read the password from the first line of standard input instead of asking twice")
    pw.set_defaults(handler=cmd_password)
    p.set_defaults(handler=lambda args: (p.print_help(), 2)[1])


def cmd_password(args: argparse.Namespace, stdin: Optional[TextIO] = None,
                 ask: Callable[[str], str] = getpass.getpass) -> int:
    from bridge.cli.common import load_config, report_config_error
    from bridge.config import ConfigError
    from bridge.status.auth import MIN_PASSWORD_LENGTH, write_password_file

    try:
        config = load_config(args)
    except ConfigError as e:
        return report_config_error(e)
    if config.status is None:
        print(f"{args.config} has no [status] section: add one (docs/operations.md) to have a status page.",
              file=sys.stderr)
        return 2
    password = _read_password(args.stdin, stdin or sys.stdin, ask)
    if password is None:
        print("The two passwords differ; nothing was changed.", file=sys.stderr)
        return 2
    if len(password) < MIN_PASSWORD_LENGTH:
        print(f"The password must have at least {MIN_PASSWORD_LENGTH} characters; nothing was changed.",
              file=sys.stderr)
        return 2
    path = config.status.password_file
    owner = None
    if os.geteuid() == 0 and os.path.isdir(config.state_dir):
        st = os.stat(config.state_dir)  # readable by the account the bridge runs as
        owner = (st.st_uid, st.st_gid)
    try:
        write_password_file(path, password, owner)
    except OSError as e:
        print(f"Could not write {path}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"The status page password is set (stored hashed in {path}); it works at once.")
    return 0


def _read_password(from_stdin: bool, stdin: TextIO, ask: Callable[[str], str]) -> Optional[str]:
    if from_stdin:
        return stdin.readline().rstrip("\r\n")
    first = ask("New status page password: ")
    second = ask("The same again: ")
    return first if first == second else None
