"""A newcomer's first hour (issue #14): `make run` in a fresh clone, then README's payment command, as written.

The demo is started with the command line the Makefile's `run` target runs (asked from make itself), in an empty
folder standing for the fresh clone, on free ports; the payment command is the one the demo's banner prints, run
from another folder.
"""

import os
import queue
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")


def free_port(count=1):
    """A port with ``count`` free ports from it on (the demo's terminals take consecutive ones)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + count < 65000 and all(_free(p) for p in range(port, port + count)):
            return port


def _free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def make_run_command(port, terminal_port):
    """What `make run PORT=... TERMINAL_PORT=...` runs, as make says it (without rebuilding the venv)."""
    if not os.path.exists(os.path.join(ROOT, "Makefile")) or shutil.which("make") is None:
        pytest.skip("needs the source tree's Makefile and make")
    out = subprocess.run(["make", "-s", "-n", "-o", ".venv/.installed", "run", f"PORT={port}",
                          f"TERMINAL_PORT={terminal_port}"], cwd=ROOT, capture_output=True, text=True, check=True)
    lines = [line for line in out.stdout.splitlines() if " demo " in line]
    assert len(lines) == 1, out.stdout
    argv = shlex.split(lines[0])
    assert argv[0].endswith("terminal-bridge") and argv[1] == "demo", argv
    # The interpreter running these tests (the venv's, or Debian's for `make test-bookworm`), same arguments.
    return [sys.executable, "-m", "bridge", *argv[1:]]


class Lines:
    """A process's output lines, read by a thread (select() on a buffered pipe misses lines already read)."""

    def __init__(self, process):
        self.queue = queue.Queue()
        self.seen = []
        threading.Thread(target=self._read, args=(process.stdout,), daemon=True).start()

    def _read(self, stream):
        for line in stream:
            self.queue.put(line)
        self.queue.put(None)

    def until(self, pattern, deadline):
        """Lines up to the first matching ``pattern`` (the deadline is a guard, not a timed assertion)."""
        while time.monotonic() < deadline:
            try:
                line = self.queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                break
            self.seen.append(line)
            if re.search(pattern, line):
                return self.seen
        raise AssertionError("not found: " + pattern + "\n" + "".join(self.seen))


def test_make_run_to_an_approved_payment_with_the_readmes_commands(tmp_path):
    port, terminal_port = free_port(), free_port(11)
    command = make_run_command(port, terminal_port)
    clone = tmp_path / "clone"
    elsewhere = tmp_path / "elsewhere"
    clone.mkdir()
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
    # Ctrl-C as from the installer's terminal: a shell's background job (`make test &` in a script) starts with
    # SIGINT ignored, which a child inherits, and Twisted then leaves it so (it only replaces Python's default).
    demo = subprocess.Popen(command, cwd=clone, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        banner = Lines(demo).until(r" pay --credentials ", time.monotonic() + 120)
        pay_line = banner[-1].strip()
        pay_argv = shlex.split(pay_line)
        if not os.path.isabs(pay_argv[0]) and shutil.which(pay_argv[0]) is None:
            pay_argv[:1] = [sys.executable, "-m", "bridge"]  # Debian's python3 has no terminal-bridge script
        # README shows the same command (its paths are the clone's, which differ from machine to machine).
        readme = open(README, encoding="utf-8").read()
        tail = pay_line.split("/demo/client.json", 1)[1]
        assert re.search(r"\.venv/bin/terminal-bridge pay --credentials \S*demo/client\.json" + re.escape(tail),
                         readme), pay_line

        paid = subprocess.run(pay_argv, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
        assert paid.returncode == 0, paid.stdout + paid.stderr
        assert "APPROVED: 12.34 EUR, authorisation" in paid.stdout
        for line in ("The bridge recorded the payment.", "Sent to the terminal: waiting for the customer's card..."):
            assert line in paid.stdout and line in readme

        # A second `make run` on the same ports says why and stops, instead of running half a demo.
        second = subprocess.run(command, cwd=clone, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 1, second.stdout + second.stderr
        assert "already in use" in second.stderr and f"make run PORT={port + 1}" in second.stderr
    finally:
        demo.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            demo.wait(timeout=30)
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.wait()
    assert demo.returncode == 0
