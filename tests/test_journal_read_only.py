"""A journal on a disk that went read-only (an SD card the kernel protected after errors), for real: a
read-only bind mount in a private mount namespace.  Needs root and `unshare -m`; skipped elsewhere."""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent('''
    import os, subprocess, sys
    from bridge.core import states
    from bridge.core.journal import Journal, PaymentRecord
    from bridge.errors import BridgeError

    directory = sys.argv[1]
    path = os.path.join(directory, "journal.sqlite3")

    def record(n):
        return PaymentRecord(id=f"pay_{n}", command_id=f"cmd_{n}", client_id="cl", terminal="t", kind="debit",
                             method="card", amount=100 * n, currency="EUR", args_digest="d", state=states.ACCEPTED,
                             created=float(n), updated=float(n))

    def write(journal, n):
        result = []
        journal.create(record(n), {}, actor="x").addBoth(result.append)
        return result[0]

    journal = Journal.open(path, threaded=False)
    assert not isinstance(write(journal, 1), Exception)
    journal.close()

    def mount(*args):
        subprocess.run(["mount", *args], check=True)

    mount("--bind", directory, directory)
    mount("-o", "remount,bind,ro", directory)

    journal = Journal.open(path, threaded=False)          # opens: the disk is read-only, not the bridge broken
    assert not journal.writable
    assert journal.get("pay_1").amount == 100            # what it holds is still served
    failure = write(journal, 2)
    assert failure.value.code == "journal_unavailable", failure
    assert "read-only" in failure.value.message, failure.value.message
    assert journal.get("pay_2") is None

    mount("-o", "remount,bind,rw", directory)             # store IT fixed the disk: no restart needed
    assert not isinstance(write(journal, 3), Exception)
    assert journal.writable
    assert journal.get("pay_3").amount == 300             # and the reader sees new writes again
    journal.close()
    print("ok")
''')


#: A bridge killed mid-payment (its WAL and -shm left behind) whose disk is read-only at the next start: the
#: journal must become writable once the disk is, without a restart, and settle the payment left in flight.
CRASHED_SCRIPT = textwrap.dedent('''
    import os, subprocess, sys
    from twisted.internet.task import Clock
    from bridge.core import states
    from bridge.core.journal import Journal, PaymentRecord
    from bridge.core.payments import PaymentService
    from bridge.core.registry import TerminalRegistry

    directory = sys.argv[1]
    path = os.path.join(directory, "journal.sqlite3")
    subprocess.run([sys.executable, "-c", f"""
    import os
    from bridge.core import states
    from bridge.core.journal import Journal, PaymentRecord
    journal = Journal.open({path!r}, threaded=False)
    record = PaymentRecord(id="pay_1", command_id="cmd_1", client_id="cl", terminal="t", kind="debit",
                           method="card", amount=100, currency="EUR", args_digest="d", state=states.ACCEPTED,
                           created=1.0, updated=1.0)
    journal.create(record, {{}}, actor="cl")
    journal.transition(record.moved_to(states.IN_PROGRESS, None, None, None, 2.0), {{}}, actor="bridge")
    os._exit(0)  # killed: nothing closed
    """.replace("\\n    ", "\\n")], check=True)
    assert os.path.exists(path + "-shm") and os.path.exists(path + "-wal"), os.listdir(directory)

    def mount(*args):
        subprocess.run(["mount", *args], check=True)

    def settle(service):
        result = []
        service.recover().addBoth(result.append)
        return result[0]

    mount("--bind", directory, directory)
    mount("-o", "remount,bind,ro", directory)
    journal = Journal.open(path, threaded=False)
    service = PaymentService(journal, TerminalRegistry([]), Clock())
    assert not journal.writable
    assert journal.get("pay_1").state == "in_progress"
    failure = settle(service)
    assert failure.value.code == "journal_unavailable", failure
    assert journal.get("pay_1").state == "in_progress"

    mount("-o", "remount,bind,rw", directory)             # the disk is writable again: no restart
    settled = settle(service)
    assert [r.state for r in settled] == ["unknown"], settled
    assert journal.writable
    assert journal.get("pay_1").state == "unknown"
    journal.close()
    print("ok")
''')


def _can_unshare_mount() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("mount"):
        return False
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                            "mount --bind / /mnt && mount -o remount,bind,ro /mnt"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_unshare_mount(), reason="needs root and `unshare -m` to make a read-only mount")
def test_a_read_only_disk_refuses_writes_serves_reads_and_recovers_without_restart(tmp_path):
    directory = tmp_path / "state"
    directory.mkdir()
    result = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c", SCRIPT,
                             str(directory)], capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT),
                            timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr


@pytest.mark.skipif(not _can_unshare_mount(), reason="needs root and `unshare -m` to make a read-only mount")
def test_a_journal_read_only_at_start_after_a_crash_writes_again_and_settles_what_was_in_flight(tmp_path):
    directory = tmp_path / "state"
    directory.mkdir()
    result = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c", CRASHED_SCRIPT,
                             str(directory)], capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT),
                            timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr
