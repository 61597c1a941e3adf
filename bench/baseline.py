"""The "libraries only" baseline of the bridge's memory: a process that imports what the bridge imports and does
nothing else, measured in the same run as the bridge (bench.py prints the difference).

What the bridge imports is found two ways, and the baseline imports both lists: a first process imports the
daemon's modules (and installs the reactor the daemon runs on) and lists ``sys.modules`` minus the bridge's own;
and the measured bridge itself runs with ``-X importtime``, which writes every module it imports, when it first
imports it, to its log (bridge_process.py): the modules of libraries that import more as they are used (on
bookworm's stack, cryptography's OpenSSL backend when the bridge loads its TLS key; python3-systemd's
``systemd.daemon`` when it tells systemd it is ready) are then in the baseline too, up to the moment the bridge's
memory was read.  A second, fresh process imports exactly that list minus the bridge's own modules, says so, and
waits: its resident memory is the baseline.  The modules the daemon imports only when a serial terminal or an
uplink is configured are in neither: the benchmark configures neither.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Callable, Iterable, Optional

#: What ``python -m bridge -c CONFIG run`` imports of the bridge before it is ready, for the benchmark's
#: configuration (TCP terminals, no uplink).
DAEMON_MODULES = ("bridge.cli.main", "bridge.service.run", "bridge.service.daemon", "bridge.api.websocket",
                  "bridge.api.tls", "bridge.terminals.caisse_ap.tcp", "bridge.core.journal")

_LIST = """
import importlib, json, sys
from twisted.internet import epollreactor
epollreactor.install()
for name in {modules!r}:
    importlib.import_module(name)
from twisted.internet import reactor, ssl  # noqa: F401
print(json.dumps(sorted(m for m in sys.modules if m != "bridge" and not m.startswith("bridge."))))
"""

_HOLD = """
import importlib, json, sys
from twisted.internet import epollreactor
epollreactor.install()
for name in json.loads(sys.stdin.readline()):
    try:
        importlib.import_module(name)
    except Exception:
        pass  # a module that only imports from its package's own import (none so far)
print("ready", flush=True)
sys.stdin.readline()
"""


def libraries_only_rss(env: dict[str, str], rss_of: Callable[[int], int],
                       imported: Optional[Iterable[str]] = None) -> tuple[int, int, list[str]]:
    """(resident bytes of the libraries-only process, how many modules it imported, those of them that only the
    measured bridge's log named); ``imported``: the modules the measured bridge imported (its ``-X importtime``
    lines), added to those the first process lists."""
    listed = subprocess.run([sys.executable, "-c", _LIST.format(modules=DAEMON_MODULES)], env=env,
                            stdout=subprocess.PIPE, check=True, text=True, timeout=120)
    static = set(json.loads(listed.stdout.strip().splitlines()[-1]))
    running = {m for m in imported or () if m not in ("__main__", "bridge") and not m.startswith("bridge.")}
    modules = sorted(static | running)
    proc = subprocess.Popen([sys.executable, "-c", _HOLD], env=env, cwd=os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(modules) + "\n")
        proc.stdin.flush()
        if proc.stdout.readline().strip() != "ready":
            raise OSError("the libraries-only process did not start")
        time.sleep(0.2)
        return rss_of(proc.pid), len(modules), sorted(running - static)
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(timeout=30)
