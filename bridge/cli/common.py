"""What the sub-commands share: loading the configuration, reporting its problems, private files, usage.

Every module of ``bridge.cli`` may import this one; it imports no other module of ``bridge.cli``.  Handlers are
given to argparse by path (``"bridge.cli.pay:run_pay"``) and imported by :func:`resolve_handler` only when that
command runs, so that a command's heavy dependencies (Twisted's reactor, autobahn, the stripe library) are only
loaded when it needs them.
"""

from __future__ import annotations

import argparse
import configparser
import importlib
import json
import os
import sys
from typing import Any, Callable, Optional, Union

from bridge.config import DEFAULT_STATE_DIR, BridgeConfig, ConfigError, load

EX_CONFIG = 78  # sysexits.h: configuration error; systemd shows it, Restart=on-failure won't loop fast

Handler = Callable[[argparse.Namespace], int]


def resolve_handler(handler: Union[str, Handler]) -> Handler:
    """A handler given as ``"module:function"``, imported now; a function as it is."""
    if not isinstance(handler, str):
        return handler
    module, _, name = handler.partition(":")
    return getattr(importlib.import_module(module), name)


def usage_of(parser: argparse.ArgumentParser) -> Handler:
    """The handler of a command given without its action: its own usage, exit status 2."""

    def handler(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    return handler


def load_config(args: argparse.Namespace) -> BridgeConfig:
    from bridge.terminals.catalogue import VALIDATORS  # each terminal type's option checks

    return load(args.config, VALIDATORS)


def report_config_error(error: ConfigError) -> int:
    print(f"The configuration has {len(error.problems)} problem(s):", file=sys.stderr)
    for problem in error.problems:
        print(f"  - {problem}", file=sys.stderr)
    return EX_CONFIG


def clients_file_and_state_dir(config_path: str) -> tuple[str, str]:
    """Where the clients file and the state directory are, even when the configuration has other problems."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(config_path, encoding="utf-8")
    except configparser.Error:
        pass
    base = os.path.dirname(os.path.abspath(config_path))
    name = parser.get("bridge", "clients_file", fallback="") or "clients.conf"
    state_dir = parser.get("bridge", "state_dir", fallback="") or DEFAULT_STATE_DIR
    return os.path.join(base, name), os.path.join(base, state_dir)


def write_private_json(path: str, data: dict[str, Any], owner: Optional[tuple[int, int]] = None) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(f.fileno(), 0o600)  # a file that already existed keeps its mode through os.open
        if owner is not None:
            os.fchown(f.fileno(), *owner)
        json.dump(data, f, indent=2)
        f.write("\n")

