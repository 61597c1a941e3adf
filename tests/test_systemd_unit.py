"""The systemd unit and the Debian packaging agree with each other and with systemd."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

import bridge

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "terminal-bridge.service"
DEBIAN = ROOT / "packaging" / "debian"

if not UNIT.exists():
    # e.g. the copy of the tests pybuild runs at package build time
    pytest.skip(f"no source tree around the tests ({UNIT} is missing)", allow_module_level=True)


def directives(text: str) -> dict:
    """Unit file ``Key=value`` lines, a key's values in order."""
    found: dict = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


UNIT_DIRECTIVES = directives(UNIT.read_text())


def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    text = UNIT.read_text()
    if not Path("/usr/bin/terminal-bridge").exists():
        # verify checks that ExecStart's program exists; the package is not installed here.
        text = text.replace("ExecStart=/usr/bin/terminal-bridge", "ExecStart=/bin/true")
    unit = tmp_path / UNIT.name
    unit.write_text(text)
    # --man=no: the man page is checked below; it is only installed with the package.
    result = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True)
    # verify exits 0 on unknown or misspelled keys, with a warning: no output at all is the bar.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_the_unit_lets_the_daemon_keep_its_threads_on_one_cpu_and_nothing_else_of_resources(tmp_path):
    """[bridge] cpu (bridge/service/cpu.py) needs sched_setaffinity, and the journal's writer thread
    sched_setscheduler (SCHED_BATCH), of the @resources group the unit otherwise refuses; systemd's own reading of
    the unit says they are allowed, realtime policies still refused, and the unit's exposure stays where it was
    but for those calls (1.5 before them)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text())
    result = subprocess.run([analyze, "security", "--offline=true", str(unit)], capture_output=True, text=True)
    resources = [line for line in result.stdout.splitlines() if "SystemCallFilter=~@resources" in line]
    assert len(resources) == 1 and "is allowed" in resources[0], result.stdout
    assert UNIT_DIRECTIVES["RestrictRealtime"] == ["yes"]
    allowed = [line for line in UNIT_DIRECTIVES["SystemCallFilter"] if not line.startswith(("@", "~"))]
    assert allowed == ["sched_setaffinity sched_setscheduler"]
    exposure = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert exposure is not None and float(exposure.group(1)) <= 1.6, result.stdout


def test_the_unit_is_a_notify_service_with_a_watchdog():
    assert UNIT_DIRECTIVES["Type"] == ["notify"]
    assert UNIT_DIRECTIVES["ExecStart"] == ["/usr/bin/terminal-bridge run"]
    assert UNIT_DIRECTIVES["WatchdogSec"] == ["30"]
    assert UNIT_DIRECTIVES["Restart"] == ["on-failure"]


def test_the_unit_lets_the_service_open_serial_terminals():
    assert "dialout" in UNIT_DIRECTIVES["SupplementaryGroups"]
    assert UNIT_DIRECTIVES["DevicePolicy"] == ["closed"]
    assert {"char-ttyUSB rw", "char-ttyACM rw"} <= set(UNIT_DIRECTIVES["DeviceAllow"])
    assert "PrivateDevices" not in UNIT_DIRECTIVES


def test_the_service_user_is_the_one_the_package_creates():
    user = UNIT_DIRECTIVES["User"][0]
    sysusers = (DEBIAN / "terminal-bridge.sysusers").read_text()
    assert re.search(rf"^u {re.escape(user)} - .* /var/lib/terminal-bridge$", sysusers, re.M)
    assert re.search(rf"^m {re.escape(user)} dialout$", sysusers, re.M)
    tmpfiles = (DEBIAN / "terminal-bridge.tmpfiles").read_text()
    assert re.search(rf"^d /var/lib/terminal-bridge 0750 {re.escape(user)} {re.escape(user)} ", tmpfiles, re.M)


def test_the_documented_man_page_exists():
    assert UNIT_DIRECTIVES["Documentation"] == ["man:terminal-bridge(8)"]
    page = ROOT / "packaging" / "terminal-bridge.8"
    assert page.read_text().splitlines()[1].startswith(".TH TERMINAL-BRIDGE 8 ")


def test_the_debian_changelog_has_the_version_of_the_code():
    first = (DEBIAN / "changelog").read_text().splitlines()[0]
    assert first.startswith(f"terminal-bridge ({bridge.__version__}) ")
