"""What the .deb ships besides the code: the documented bridge.conf and the documentation (issue #14 item 10)."""

import os
import re

import pytest

from bridge.config import add_client, load
from bridge.terminals.catalogue import VALIDATORS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGING = os.path.join(ROOT, "packaging")
if not os.path.isdir(PACKAGING):  # the .deb's build runs the tests without the source tree around them
    pytest.skip(f"no source tree around the tests ({PACKAGING} is missing)", allow_module_level=True)


def read(*parts):
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as f:
        return f.read()


def test_the_installed_bridge_conf_has_a_working_example_of_every_terminal_type_and_an_uplink(tmp_path):
    text = read("packaging", "bridge.conf")
    # Every example, uncommented, as an installer would: it must pass the configuration's own checks.
    uncommented = re.sub(r"(?m)^#(\[|[a-z_]+ =)", r"\1", text)
    sections = re.findall(r"(?m)^\[([a-z]+:[^\]]+|bridge)\]", uncommented)
    types = set(re.findall(r"(?m)^type = (\S+)", uncommented))
    assert types == set(VALIDATORS), types
    assert any(s.startswith("uplink:") for s in sections), sections
    config = tmp_path / "bridge.conf"
    config.write_text(uncommented.replace("/var/lib/terminal-bridge", str(tmp_path / "state"))
                      .replace("/etc/terminal-bridge/clients.conf", "clients.conf"))
    (tmp_path / "stripe-secret-key").write_text("sk_test_example\n")
    secrets = tmp_path / "uplink-odoo.secrets"
    secrets.write_text("channel_token = " + "a" * 40 + "\nfeedback_secret = " + "b" * 40 + "\n")
    os.chmod(secrets, 0o600)
    add_client(str(tmp_path / "clients.conf"), "odoo", "cl_odoo", "c" * 64, "d" * 64, ("pay", "read"))
    loaded = load(str(config), VALIDATORS)
    assert set(loaded.terminals) == {s.split(":", 1)[1] for s in sections if s.startswith("terminal:")}
    assert len(loaded.uplinks) == 1


def test_the_documentation_the_help_and_the_man_page_point_to_is_shipped():
    docs = read("packaging", "debian", "terminal-bridge.docs").split()
    assert "README.md" in docs and "docs" in docs
    shipped = {"README.md", "docs"} | {f"docs/{name}" for name in os.listdir(os.path.join(ROOT, "docs"))}
    for text in (read("packaging", "terminal-bridge.8"), read("bridge", "cli", "main.py"), read("README.md")):
        for path in re.findall(r"/usr/share/doc/terminal-bridge/([\w./-]+\w)", text):
            assert path in shipped, path
    # Not compressed, so the links between the pages work as they are.
    assert "dh_compress -X.md" in read("packaging", "debian", "rules")
