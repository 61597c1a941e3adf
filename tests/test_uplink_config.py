"""[uplink:NAME] sections: parsing, every problem named, the secrets file, and `terminal-bridge uplink status`."""

import json
import os
import time
import subprocess
import sys

import pytest

from bridge.config import ConfigError
from bridge.uplink.config import parse_uplink
from bridge.uplink.service import UplinkStatus, status_path
from tests.support import add_test_client, load_config, write_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "0123456789abcdef0123"


def secrets_file(directory, mode=0o600, **values):
    values = values or {"channel_token": TOKEN, "feedback_secret": "passphrase-of-twenty"}
    path = os.path.join(directory, "odoo.secrets")
    with open(path, "w") as f:
        f.write("# uplink secrets\n" + "".join(f"{k} = {v}\n" for k, v in values.items()))
    os.chmod(path, mode)
    return path


def parse(tmp_path, **options):
    base = {"url": "https://shop.odoo.com", "database": "shop", "client": "odoo", "secrets_file": "odoo.secrets"}
    base.update(options)
    return parse_uplink("odoo", {k: v for k, v in base.items() if v is not None}, str(tmp_path))


def test_a_complete_section(tmp_path):
    secrets_file(tmp_path)
    uplink, problems = parse(tmp_path)
    assert problems == []
    assert (uplink.websocket_url, uplink.origin, uplink.channel) == (
        "wss://shop.odoo.com/websocket", "https://shop.odoo.com", "terminal_bridge-" + TOKEN)
    assert uplink.feedback_target == "https://shop.odoo.com/terminal_bridge/feedback"
    assert (uplink.feedback_hash, uplink.fetch_interval, uplink.ca_file) == ("sha512", 30, None)
    assert uplink.feedback_secret == "passphrase-of-twenty"
    assert "passphrase" not in repr(uplink) and TOKEN not in repr(uplink)


def test_a_feedback_only_uplink_for_a_system_other_than_odoo(tmp_path):
    secrets_file(tmp_path, feedback_secret="passphrase-of-twenty")
    uplink, problems = parse(tmp_path, url=None, database=None, feedback_url="https://erp.example.com/hook")
    assert problems == []
    assert not uplink.has_odoo
    assert uplink.feedback_target == "https://erp.example.com/hook"


@pytest.mark.parametrize("options,key,words", [
    ({"url": "http://shop.odoo.com"}, "url", "https://"),
    ({"url": "https://shop.odoo.com/web"}, "url", "base address"),
    ({"url": None}, "url", "missing"),
    ({"database": None}, "database", "missing"),
    ({"client": None}, "client", "missing"),
    ({"feedback_hash": "md5"}, "feedback_hash", "sha512"),
    ({"fetch_interval": "0"}, "fetch_interval", "between"),
    ({"fetch_interval": "soon"}, "fetch_interval", "not a number"),
    ({"ca_file": "missing.pem"}, "ca_file", "cannot be read"),
    ({"secrets_file": "nope.secrets"}, "secrets_file", "does not exist"),
    ({"colour": "blue"}, "colour", "unknown setting"),
])
def test_every_problem_is_named(tmp_path, options, key, words):
    secrets_file(tmp_path)
    uplink, problems = parse(tmp_path, **options)
    assert uplink is None
    assert any(k == key and words in message for k, message in problems), problems


def test_a_secrets_file_readable_by_others_is_refused(tmp_path):
    secrets_file(tmp_path, mode=0o644)
    _, problems = parse(tmp_path)
    assert any("chmod 600" in message for _, message in problems)


def test_short_secrets_are_refused(tmp_path):
    secrets_file(tmp_path, channel_token="short", feedback_secret="tiny")
    _, problems = parse(tmp_path)
    messages = " ".join(message for _, message in problems)
    assert "channel_token" in messages and "feedback_secret" in messages


def write_bridge(tmp_path, client="odoo"):
    path = write_config(str(tmp_path), {"till-1": "127.0.0.1:9"})
    add_test_client(path, "odoo")
    secrets_file(tmp_path)
    with open(path, "a") as f:
        f.write(f"[uplink:odoo]\nurl = https://shop.odoo.com\ndatabase = shop\nclient = {client}\n"
                "secrets_file = odoo.secrets\n")
    return path


def test_the_bridge_configuration_carries_its_uplinks(tmp_path):
    config = load_config(write_bridge(tmp_path))
    assert list(config.uplinks) == ["odoo"]
    assert config.uplinks["odoo"].database == "shop"


def test_an_uplink_naming_an_unknown_client_is_a_problem(tmp_path):
    with pytest.raises(ConfigError) as error:
        load_config(write_bridge(tmp_path, client="nobody"))
    assert "[uplink:odoo] client" in str(error.value)


def tb(*args):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "bridge", *args], capture_output=True, text=True, env=env,
                          timeout=30)


def test_uplink_status_before_the_bridge_ever_ran(tmp_path):
    path = write_bridge(tmp_path)
    result = tb("--config", path, "uplink", "status")
    assert result.returncode == 1
    assert "not running" in result.stdout and "odoo: https://shop.odoo.com (database shop)" in result.stdout


def test_uplink_status_of_a_running_bridge(tmp_path):
    path = write_bridge(tmp_path)
    config = load_config(path)
    status = UplinkStatus(status_path(config.state_dir, "odoo"), "odoo", now=lambda: 1_700_000_000.0)
    status.data["pid"] = os.getpid()  # alive: this test process stands in for the daemon
    status.set("bus", False)
    status.set("https", True)
    status.data["fetched_at"] = time.time() - 5  # the bus is down, and the periodic fetch works
    status.error("cannot open the bus WebSocket: 503 Service Unavailable")
    result = tb("--config", path, "uplink", "status")
    assert result.returncode == 0, result.stderr
    assert "payments:  can flow" in result.stdout
    assert "bus:       not connected since 2023-11-14 22:13:20 UTC" in result.stdout
    assert "commands:  fetched since" in result.stdout
    assert "last error: cannot open the bus WebSocket: 503" in result.stdout
    assert "feedback:  unknown (no journal yet)" in result.stdout
    data = json.loads(tb("--config", path, "uplink", "status", "--json").stdout)
    assert (data[0]["name"], data[0]["bus"], data[0]["https"], data[0]["connected"]) == ("odoo", False, True, True)
    status.data["fetched_at"] = time.time() - 600  # ... but no fetch worked for 10 minutes
    status.write()
    result = tb("--config", path, "uplink", "status")
    assert result.returncode == 1
    assert "payments:  cannot flow: the bus is down and no fetch worked lately" in result.stdout
