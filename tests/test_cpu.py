"""[bridge] cpu: the daemon's threads kept on one CPU (bridge/service/cpu.py).

The choice is a pure function; the moving of threads is checked in child processes (so that this one stays where
it is), down to the real daemon as systemd starts it: every thread it has once ready, read from /proc.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from bridge.service.cpu import choose_cpu
from tests.test_sdnotify import FakeSystemd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALLOWED = os.sched_getaffinity(0)


def expected_for(setting):
    """Where the threads of a child of this process should end up."""
    cpu, _ = choose_cpu(setting, ALLOWED)
    return {cpu} if cpu is not None else ALLOWED


@pytest.mark.parametrize("setting, allowed, cpu", [
    ("auto", {0, 1, 2, 3}, 3),   # the last one: CPU 0 takes the interrupts
    ("auto", {1, 5}, 5),
    ("auto", {2}, None),         # one CPU: nothing to choose
    ("all", {0, 1}, None),
    (0, {0, 1}, 0),
    (1, {0, 1}, 1),
])
def test_the_cpu_chosen(setting, allowed, cpu):
    assert choose_cpu(setting, allowed) == (cpu, None)


def test_a_cpu_the_process_may_not_use_is_not_taken_and_says_why():
    cpu, problem = choose_cpu(7, {0, 1})
    assert cpu is None
    assert problem == "CPU 7 is not one this process may use (0, 1); its threads run on any of those"


CHILD = textwrap.dedent("""
    import json, os, sys, threading
    from twisted.logger import globalLogPublisher
    from bridge.service.cpu import keep_on_one_cpu

    said = []
    globalLogPublisher.addObserver(lambda event: said.append(event["log_format"].format(**event)))
    stop = threading.Event()
    before = threading.Thread(target=stop.wait)
    before.start()
    setting = sys.argv[1]
    if len(sys.argv) > 2:  # the second thread's move fails: "deny" (EPERM), or "gone" (ESRCH: it ended)
        real, moved = os.sched_setaffinity, []
        error = PermissionError(1, "Operation not permitted") if sys.argv[2] == "deny" else ProcessLookupError(3, "No such process")

        def fail_the_second(tid, cpus):
            if len(cpus) == 1 and moved:
                moved.append(None)
                if len(moved) == 2:
                    raise error
            moved.append(tid)
            real(tid, cpus)

        os.sched_setaffinity = fail_the_second
    result = keep_on_one_cpu(int(setting) if setting.isdigit() else setting)
    after = threading.Thread(target=stop.wait)
    after.start()
    tasks = {task: sorted(os.sched_getaffinity(int(task))) for task in os.listdir("/proc/self/task")}
    stop.set()
    print(json.dumps({"result": result, "tasks": tasks, "said": said}))
""")


def run_child(setting: str, *more: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, setting, *more], env=dict(os.environ, PYTHONPATH=ROOT),
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("setting", ["auto", "all", str(max(ALLOWED))])
def test_every_thread_moves_those_before_and_after_alike(setting):
    child = run_child(setting)
    expected = expected_for(int(setting) if setting.isdigit() else setting)
    assert len(child["tasks"]) == 3  # the main thread, one started before, one after
    assert {tuple(cpus) for cpus in child["tasks"].values()} == {tuple(sorted(expected))}
    moved = expected != ALLOWED
    assert child["result"] == (min(expected) if moved else None)
    assert [line for line in child["said"] if "CPU" in line] == (
        [f"The bridge's threads run on CPU {min(expected)} of {', '.join(map(str, sorted(ALLOWED)))} "
         f"([bridge] cpu = {setting})"] if moved else [])


def test_a_cpu_that_cannot_be_had_leaves_the_threads_where_they_were():
    child = run_child("4095")
    assert child["result"] is None
    assert {tuple(cpus) for cpus in child["tasks"].values()} == {tuple(sorted(ALLOWED))}
    assert child["said"] == [f"[bridge] cpu: CPU 4095 is not one this process may use "
                             f"({', '.join(map(str, sorted(ALLOWED)))}); its threads run on any of those"]


@pytest.mark.skipif(len(ALLOWED) < 2, reason="one CPU: there is nothing to move")
def test_a_refused_move_is_logged_and_every_thread_is_put_back():
    """The first thread moved, the next refused: the bridge says so, in words, and every thread is back on all the
    CPUs it had."""
    child = run_child("auto", "deny")
    assert child["result"] is None
    assert {tuple(cpus) for cpus in child["tasks"].values()} == {tuple(sorted(ALLOWED))}
    cpus = ", ".join(map(str, sorted(ALLOWED)))
    assert child["said"] == [f"Could not keep the bridge's threads on CPU {max(ALLOWED)}: Operation not permitted; "
                             f"they run on any of {cpus}"]


@pytest.mark.skipif(len(ALLOWED) < 2, reason="one CPU: there is nothing to move")
def test_a_thread_that_ended_meanwhile_is_no_failure():
    child = run_child("auto", "gone")
    assert child["result"] == max(ALLOWED)
    assert child["said"] == [f"The bridge's threads run on CPU {max(ALLOWED)} of "
                             f"{', '.join(map(str, sorted(ALLOWED)))} ([bridge] cpu = auto)"]


@pytest.mark.parametrize("setting", ["auto", "all"])
def test_the_running_daemon_keeps_all_its_threads_on_the_cpu_chosen(tmp_path, setting):
    """`terminal-bridge run` as systemd starts it; once READY, every thread it has (the reactor's, the journal's
    writer, the integrity check's) is where [bridge] cpu says."""
    config = tmp_path / "bridge.conf"
    config.write_text(f"[bridge]\nlisten = 127.0.0.1:0\nstate_dir = state\ncpu = {setting}\n")
    address = str(tmp_path / "notify")
    systemd = FakeSystemd(address)
    systemd.sock.settimeout(30)
    env = dict(os.environ, PYTHONPATH=ROOT, NOTIFY_SOCKET=address)
    daemon = subprocess.Popen([sys.executable, "-m", "bridge", "-c", str(config), "run"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not any(m.startswith("READY=1") for m in [systemd.receive()]):
            pass
        tasks = os.listdir(f"/proc/{daemon.pid}/task")
        where = {task: os.sched_getaffinity(int(task)) for task in tasks}
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        systemd.close()
    assert len(where) >= 2  # the reactor's thread and the journal's writer at least
    assert set(map(frozenset, where.values())) == {frozenset(expected_for(setting))}
