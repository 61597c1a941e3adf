"""scripts/ensure-system-deps.sh: `make run` installs what it needs and changes nothing else (issue #14 item 8).

apt-get, dpkg-query and sudo are stand-ins on PATH that record their calls: the test is about the script's
decisions, and must not install anything on the machine running it.
"""

import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "ensure-system-deps.sh")
if not os.path.exists(SCRIPT):  # the .deb's build runs the tests without scripts/ around them
    pytest.skip(f"no source tree around the tests ({SCRIPT} is missing)", allow_module_level=True)

FAKE = """#!/bin/sh
echo "$(basename "$0") $*" >> "$CALLS"
case "$(basename "$0") $*" in
  "dpkg-query "*) case "$*" in *" $INSTALLED") echo "install ok installed" ;; *) exit 1 ;; esac ;;
  "apt-get install -s "*) cat "$SIMULATION" ;;
  "apt-cache show "*) case "$*" in *" $UNKNOWN") exit 100 ;; esac ;;
  "sudo "*) shift 0; exec "$@" ;;
esac
exit 0
"""


@pytest.fixture
def machine(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("apt-get", "apt-cache", "dpkg-query", "sudo"):
        path = bin_dir / name
        path.write_text(FAKE)
        path.chmod(0o755)
    simulation = tmp_path / "simulation"
    simulation.write_text("")
    calls = tmp_path / "calls"
    calls.write_text("")

    def run(mode="dev", installed="nothing", simulated="", names=(), unknown="nothing"):
        simulation.write_text(simulated)
        env = dict(os.environ, PATH=f"{bin_dir}:/usr/bin:/bin", CALLS=str(calls), SIMULATION=str(simulation),
                   INSTALLED=installed, UNKNOWN=unknown)
        result = subprocess.run(["sh", SCRIPT, mode, *names], capture_output=True, text=True, env=env, timeout=30)
        return result, calls.read_text().splitlines()

    return run


def installs(calls):
    return [c for c in calls if c.startswith("apt-get install") and " -s " not in c]


def test_the_dev_setup_needs_only_python3_venv_and_builds_nothing_against_systemd(machine):
    result, calls = machine()
    assert result.returncode == 0, result.stderr
    assert [c.split()[-1] for c in calls if c.startswith("dpkg-query")] == ["python3-venv"]
    assert installs(calls) == ["apt-get install -y -qq --no-install-recommends --no-upgrade python3-venv"]
    with open(os.path.join(ROOT, "Makefile"), encoding="utf-8") as f:
        makefile = f.read()
    assert "pip install --quiet -e '.[test]'" in makefile and "systemd]" not in makefile


def test_nothing_is_installed_when_it_would_upgrade_the_machine(machine):
    upgrade = ("Inst libsystemd0 [252.38-1~deb12u1] (252.39-1~deb12u2 Debian:12.12/stable [amd64])\n"
               "Inst python3-venv (3.11.2-1+b1 Debian:12.12/stable [amd64])\n")
    result, calls = machine(simulated=upgrade)
    assert result.returncode == 1
    assert installs(calls) == []
    assert "would also upgrade or remove packages" in result.stderr and "libsystemd0 [252.38" in result.stderr


def test_nothing_is_asked_of_apt_when_everything_is_there(machine):
    result, calls = machine(installed="python3-venv")
    assert result.returncode == 0 and [c for c in calls if c.startswith("apt-get")] == []


def test_named_packages_are_installed_and_a_name_debian_lacks_is_skipped(machine):
    """The `packages` mode serves scripts/ensure-odoo-deps.sh: Odoo's debian/control may name a package that
    bookworm does not ship."""
    result, calls = machine("packages", installed="python3-lxml", unknown="python3-lxml-html-clean",
                            names=("python3-lxml", "python3-babel", "python3-lxml-html-clean"))
    assert result.returncode == 0, result.stderr
    assert installs(calls) == ["apt-get install -y -qq --no-install-recommends --no-upgrade python3-babel"]
    assert "Debian has no python3-lxml-html-clean; skipped" in result.stderr
