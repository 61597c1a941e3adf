"""The `terminal-bridge` command as a user runs it: a real process, its output and its exit status."""

import json
import os
import subprocess
import sys

import pytest

from bridge import __version__

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tb(*args, timeout=30, env=None, **kw):
    env = env or dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "bridge", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, **kw)


def test_version():
    result = tb("--version")
    assert (result.returncode, result.stdout.strip()) == (0, f"terminal-bridge {__version__}")


@pytest.mark.parametrize("command", [[], ["run"], ["check-config"], ["client", "add"], ["client", "credentials"],
                                     ["pay"], ["refund"], ["payments"], ["resolve"], ["simulate", "caisse-ap"],
                                     ["demo"]])
def test_every_command_has_help(command):
    result = tb(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: terminal-bridge" in result.stdout
    assert len(result.stdout.splitlines()) > 3


def test_the_demos_help_names_what_it_starts_and_the_ports_it_takes():
    from bridge.cli.demo import DEMO_TERMINALS, STRIPE_PORT_OFFSET

    helped = " ".join(tb("demo", "--help").stdout.split())
    assert "three simulated Caisse-AP terminals" in helped and len(DEMO_TERMINALS) == 3
    assert "simulated Stripe reader" in helped
    assert f"18888-{18888 + len(DEMO_TERMINALS) - 1} and {18888 + STRIPE_PORT_OFFSET}" in helped


def test_every_option_of_every_command_says_what_it_is_for():
    import argparse

    from bridge.cli.main import build_parser

    def silent(parser, name):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for word, sub in action.choices.items():
                    yield from silent(sub, f"{name} {word}")
            elif not action.help and action.dest != "help":
                yield f"{name} {'/'.join(action.option_strings) or action.dest}"

    assert list(silent(build_parser(), "terminal-bridge")) == []


def test_no_command_prints_help_and_fails():
    result = tb()
    assert result.returncode == 2 and "check-config" in result.stdout


@pytest.mark.parametrize("command, actions", [("client", ("add", "credentials")), ("simulate", ("caisse-ap",))])
def test_a_command_without_its_action_prints_its_own_usage(command, actions):
    result = tb(command)
    assert result.returncode == 2
    assert f"usage: terminal-bridge {command}" in result.stdout, result.stdout
    assert all(action in result.stdout for action in actions) and "--terminal-port" not in result.stdout


def test_simulate_says_caisse_ap_is_tcp_and_serial():
    listed = tb("simulate", "--help").stdout
    line = next(line for line in listed.splitlines() if line.strip().startswith("caisse-ap"))
    assert "TCP" in line and "serial" in line
    assert "--serial" in tb("simulate", "caisse-ap", "--help").stdout.split("options:", 1)[0]


def test_global_options_are_accepted_after_the_command(tmp_path):
    config = tmp_path / "bridge.conf"
    config.write_text("[bridge]\nstate_dir = state\n")
    result = tb("payments", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "No journal yet" in result.stdout and str(tmp_path / "state") in result.stdout
    assert tb("check-config", "-c", str(config)).returncode == 0
    assert tb("client", "add", "pos-1", "--config", str(config)).returncode == 0
    assert "[client:pos-1]" in (tmp_path / "clients.conf").read_text()


def test_payments_options_have_help_and_a_bogus_state_is_refused(tmp_path):
    helped = tb("payments", "--help").stdout
    assert "show at most" in helped and "only the payments of this terminal" in helped and "unknown" in helped
    config = tmp_path / "bridge.conf"
    config.write_text("[bridge]\nstate_dir = state\n")
    result = tb("-c", str(config), "payments", "--state", "bogus")
    assert result.returncode == 2 and "invalid choice: 'bogus'" in result.stderr
    assert "No payments match" not in result.stdout


def test_check_config_names_problems_and_exits_78(tmp_path):
    config = tmp_path / "bridge.conf"
    config.write_text("[bridge]\nlisten = nowhere:99999\n[terminal:t]\ntype = caisse-ap-tcp\n")
    result = tb("-c", str(config), "check-config")
    assert result.returncode == 78
    assert "[bridge] listen" in result.stderr and "[terminal:t] address" in result.stderr


def test_check_config_ok(tmp_path):
    config = tmp_path / "bridge.conf"
    config.write_text("[bridge]\n[terminal:t]\ntype = caisse-ap-tcp\naddress = 127.0.0.1\n")
    result = tb("-c", str(config), "check-config")
    assert result.returncode == 0 and "OK" in result.stdout


def test_run_refuses_a_bad_config_with_78(tmp_path):
    assert tb("-c", str(tmp_path / "missing.conf"), "run").returncode == 78


def test_client_add_prints_secrets_once_and_stores_them_privately(tmp_path):
    config = tmp_path / "bridge.conf"
    config.write_text("[bridge]\nstate_dir = state\n")
    creds = tmp_path / "pos.json"
    result = tb("-c", str(config), "client", "add", "pos-1", "--write-credentials", str(creds),
                "--url", "wss://127.0.0.1:8443")
    assert result.returncode == 0, result.stderr
    data = json.loads(creds.read_text())
    assert data["secret_in"] in result.stdout and data["secret_out"] in result.stdout
    assert data["url"] == "wss://127.0.0.1:8443"
    clients = tmp_path / "clients.conf"
    assert os.stat(clients).st_mode & 0o777 == 0o600 and os.stat(creds).st_mode & 0o777 == 0o600
    assert data["client_id"] in clients.read_text()
    assert tb("-c", str(config), "client", "add", "pos-1").returncode == 2  # the name is taken


def _tls(state):
    from bridge.api.tls import ensure_certificate, fingerprint_of_pem

    ensure_certificate(str(state / "tls" / "bridge.crt"), str(state / "tls" / "bridge.key"))
    return fingerprint_of_pem((state / "tls" / "bridge.crt").read_bytes())


def test_client_add_writes_the_fingerprint_and_the_address_with_terminals_configured(tmp_path):
    """README's flow on an installed bridge: a terminal configured, listening on every address."""
    config = tmp_path / "bridge.conf"
    config.write_text("[bridge]\nlisten = 0.0.0.0:9443\nstate_dir = state\n"
                      "[terminal:till-1]\ntype = caisse-ap-tcp\naddress = 192.0.2.7:8888\n"
                      "[terminal:back]\ntype = caisse-ap-serial\ndevice = /dev/ttyACM0\n")
    fingerprint = _tls(tmp_path / "state")
    creds = tmp_path / "pos-1.json"
    result = tb("-c", str(config), "client", "add", "pos-1", "--write-credentials", str(creds))
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr
    data = json.loads(creds.read_text())
    assert data["fingerprint"] == fingerprint
    assert data["url"].startswith("wss://") and data["url"].endswith(":9443") and "0.0.0.0" not in data["url"]
    assert data["url"] in result.stdout


def test_client_add_says_when_the_address_it_found_works_on_this_machine_only(tmp_path, monkeypatch, capsys):
    """Listening on every address, on a machine with no network route: the host name's address is Debian's
    127.0.1.1, which a till on another machine cannot reach."""
    from bridge.cli import commands
    from bridge.cli.main import main

    config = tmp_path / "bridge.conf"
    config.write_text("[bridge]\nlisten = 0.0.0.0:9443\nstate_dir = state\n")
    _tls(tmp_path / "state")
    creds = tmp_path / "pos-1.json"
    monkeypatch.setattr(commands, "machine_address", lambda ipv6=False: "127.0.1.1")
    assert main(["-c", str(config), "client", "add", "pos-1", "--write-credentials", str(creds)]) == 0
    warned = " ".join(capsys.readouterr().err.split())
    assert "wss://127.0.1.1:9443, which works on this machine only" in warned, warned
    assert f"client credentials pos-1 --write-credentials {creds} --url" in warned
    assert json.loads(creds.read_text())["url"] == "wss://127.0.1.1:9443"
    # With the address given, or found on the shop's network, nothing to say.
    assert main(["-c", str(config), "client", "credentials", "pos-1", "--write-credentials", str(creds),
                 "--url", "wss://192.0.2.5:9443"]) == 0
    monkeypatch.setattr(commands, "machine_address", lambda ipv6=False: "192.0.2.5")
    assert main(["-c", str(config), "client", "credentials", "pos-1", "--write-credentials", str(creds)]) == 0
    assert "Warning" not in capsys.readouterr().err


def test_client_add_before_the_first_start_warns_and_client_credentials_writes_the_file_again(tmp_path):
    config = tmp_path / "bridge.conf"
    config.write_text("[bridge]\nlisten = 127.0.0.1:9443\nstate_dir = state\n")
    creds = tmp_path / "pos-1.json"
    result = tb("-c", str(config), "client", "add", "pos-1", "--write-credentials", str(creds))
    assert result.returncode == 0, result.stderr
    assert "no fingerprint to check the bridge against" in result.stderr
    assert f"terminal-bridge client credentials pos-1 --write-credentials {creds}" in result.stderr
    first = json.loads(creds.read_text())
    assert "fingerprint" not in first and first["url"] == "wss://127.0.0.1:9443"
    fingerprint = _tls(tmp_path / "state")  # the bridge's first start
    again = tb("-c", str(config), "client", "credentials", "pos-1", "--write-credentials", str(creds))
    assert again.returncode == 0 and again.stderr == "", again.stderr
    assert first["secret_in"] not in again.stdout  # the secrets are not printed again
    assert json.loads(creds.read_text()) == dict(first, fingerprint=fingerprint)
    assert os.stat(creds).st_mode & 0o777 == 0o600
    missing = tb("-c", str(config), "client", "credentials", "pos-9", "--write-credentials", str(creds))
    assert missing.returncode == 2 and "No client named 'pos-9'" in missing.stderr and "pos-1" in missing.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_client_add_under_sudo_gives_the_credentials_file_to_who_ran_sudo(tmp_path):
    config = tmp_path / "bridge.conf"
    config.write_text("[bridge]\nstate_dir = state\n")
    creds = tmp_path / "pos.json"
    result = tb("-c", str(config), "client", "add", "pos-1", "--write-credentials", str(creds),
                env=dict(os.environ, PYTHONPATH=ROOT, SUDO_UID="65534", SUDO_GID="65534"))
    assert result.returncode == 0, result.stderr
    st = os.stat(creds)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (65534, 65534, 0o600)


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_client_add_as_root_gives_the_file_to_the_bridges_account(tmp_path):
    config = tmp_path / "bridge.conf"
    config.write_text("[bridge]\nstate_dir = state\n")
    os.mkdir(tmp_path / "state")
    os.chown(tmp_path / "state", 65534, 65534)
    assert tb("-c", str(config), "client", "add", "pos-1").returncode == 0
    st = os.stat(tmp_path / "clients.conf")
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (65534, 65534, 0o600)


def test_pay_without_credentials_explains(tmp_path):
    result = tb("pay", "--terminal", "t", "--amount", "1")
    assert result.returncode == 2 and "--credentials" in result.stderr


def test_pay_says_credentials_are_required_and_explains_a_file_that_is_not_json(tmp_path):
    usage = tb("pay", "--help").stdout
    assert "--credentials FILE" in usage and "[--credentials" not in usage
    creds = tmp_path / "c.json"
    creds.write_text("client_id = x\n")
    result = tb("pay", "--credentials", str(creds), "--terminal", "t", "--amount", "1")
    assert result.returncode == 2
    assert "is not the JSON file `client add --write-credentials` writes" in result.stderr, result.stderr
    assert "Expecting value" not in result.stderr
    creds.write_text(json.dumps({"client_id": "c"}))
    result = tb("pay", "--credentials", str(creds), "--terminal", "t", "--amount", "1")
    assert result.returncode == 2 and "has no secret_in" in result.stderr, result.stderr


def test_a_refund_says_it_is_a_refund():
    from bridge.cli.pay import describe_outcome

    refund = {"state": "approved", "amount": 500, "currency": "EUR", "kind": "refund",
              "details": {"authorisation": "654321", "refund_of": "pay_1"}}
    assert describe_outcome(refund) == "REFUND APPROVED: 5.00 EUR, refund of pay_1, authorisation 654321."
    assert describe_outcome(dict(refund, kind="debit", details={})) == "APPROVED: 5.00 EUR."
    assert describe_outcome(dict(refund, state="declined")).startswith("REFUND DECLINED: 5.00 EUR.")


def test_a_refund_in_progress_does_not_promise_a_card():
    from bridge.cli.pay import progress_line

    assert progress_line("in_progress", "payment") == "Sent to the terminal: waiting for the customer's card..."
    assert progress_line("in_progress", "refund") == ("Sent to the terminal: waiting for its answer (a card "
                                                      "terminal asks for the customer's card)...")
    assert progress_line("accepted", "refund") == "The bridge recorded the refund."
    assert progress_line("approved", "payment") is None


def test_the_command_that_checks_an_unknown_payment_is_one_the_user_can_run(tmp_path, monkeypatch):
    """`pay` prints it when the payment's end is unknown: with the program as the user ran it when that is not
    the `terminal-bridge` on the PATH (a newcomer's .venv/bin/terminal-bridge, from the demo's banner)."""
    import argparse
    import shlex

    from bridge.cli.pay import check_command

    args = argparse.Namespace(credentials="/clone/demo/client.json", url=None, fingerprint=None, cafile=None)
    program = tmp_path / "clone" / ".venv" / "bin" / "terminal-bridge"
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)

    def checked(argv0, path):
        monkeypatch.setattr(sys, "argv", [argv0, "pay"])
        monkeypatch.setenv("PATH", path)
        return shlex.split(check_command(["pay", "--terminal", "demo", "--amount", "12.34"], args, "c1"))

    line = checked(str(program), str(tmp_path / "nowhere"))
    assert line == [str(program), "pay", "--terminal", "demo", "--amount", "12.34", "--credentials",
                    "/clone/demo/client.json", "--command-id", "c1"]
    assert checked(str(program), str(program.parent))[0] == "terminal-bridge"  # the one on the PATH
    assert checked(os.path.join(ROOT, "bridge", "__main__.py"), "")[0] == "terminal-bridge"


def test_pay_refuses_a_bad_amount_before_connecting(tmp_path):
    creds = tmp_path / "c.json"
    creds.write_text(json.dumps({"client_id": "c", "secret_in": "a" * 64, "secret_out": "b" * 64,
                                 "url": "wss://127.0.0.1:1"}))
    result = tb("pay", "--credentials", str(creds), "--terminal", "t", "--amount", "12.345")
    assert result.returncode == 2 and "decimal places" in result.stderr


def test_run_and_pay_against_a_real_daemon(tmp_path):
    """The daemon as systemd runs it, a simulator, and `pay` as a cashier would use it."""
    import socket
    import time

    def free_port():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    sim_port, lost_port, port = free_port(), free_port(), free_port()
    config = tmp_path / "bridge.conf"
    config.write_text(f"[bridge]\nlisten = 127.0.0.1:{port}\nstate_dir = state\n"
                      f"[terminal:till]\ntype = caisse-ap-tcp\naddress = 127.0.0.1:{sim_port}\nquiet_period = 0.05\n"
                      f"[terminal:lost]\ntype = caisse-ap-tcp\naddress = 127.0.0.1:{lost_port}\n")
    creds, it_creds = tmp_path / "pos.json", tmp_path / "store-it.json"
    env = dict(os.environ, PYTHONPATH=ROOT)
    sim = subprocess.Popen([sys.executable, "-m", "bridge", "simulate", "caisse-ap", "--listen",
                            f"tcp:{sim_port}:interface=127.0.0.1"], env=env, stdout=subprocess.PIPE, text=True)
    # A terminal whose link drops once it has the request: the payment's outcome is unknown.
    lost = subprocess.Popen([sys.executable, "-m", "bridge", "simulate", "caisse-ap", "--disconnect", "--listen",
                             f"tcp:{lost_port}:interface=127.0.0.1"], env=env, stdout=subprocess.PIPE, text=True)
    daemon = None
    try:
        assert "listening" in sim.stdout.readline()
        assert "listening" in lost.stdout.readline()
        assert tb("-c", str(config), "client", "add", "pos", "--write-credentials", str(creds),
                  "--url", f"wss://127.0.0.1:{port}").returncode == 0
        assert tb("-c", str(config), "client", "add", "store-it", "--rights", "read,resolve,refund,admin",
                  "--write-credentials", str(it_creds), "--url", f"wss://127.0.0.1:{port}").returncode == 0
        daemon = subprocess.Popen([sys.executable, "-m", "bridge", "-c", str(config), "run"], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
    except BaseException:
        for process in (daemon, sim, lost):
            if process is not None:
                process.kill()
        raise
    try:
        from bridge.api.tls import fingerprint_of_pem

        fingerprint = fingerprint_of_pem((tmp_path / "state" / "tls" / "bridge.crt").read_bytes())
        # `client add` ran before the first start: the credentials carry no fingerprint, and `pay` says so.
        blind = tb("pay", "--credentials", str(creds), "--terminal", "till", "--amount", "12.34")
        assert blind.returncode == 2, blind.stdout + blind.stderr
        assert "has no fingerprint to check the bridge's certificate against" in blind.stderr, blind.stderr
        assert "not the expected one" not in blind.stderr
        # Written again once the bridge has started, the file is all `pay` needs.
        assert tb("-c", str(config), "client", "credentials", "pos", "--write-credentials", str(creds)).returncode == 0
        result = tb("pay", "--credentials", str(creds), "--terminal", "till", "--amount", "12.34", "--currency", "EUR")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "APPROVED: 12.34 EUR" in result.stdout and "authorisation" in result.stdout
        paid = result.stdout.split("Payment ", 1)[1].split()[0]
        refund = tb("refund", paid, "--amount", "2.00", "--credentials", str(it_creds), "--fingerprint", fingerprint)
        assert refund.returncode == 0, refund.stdout + refund.stderr
        assert f"REFUND APPROVED: 2.00 EUR, refund of {paid}" in refund.stdout
        listing = tb("-c", str(config), "payments")
        assert listing.returncode == 0 and "approved" in listing.stdout and "12.34 EUR" in listing.stdout
        wrong = tb("pay", "--credentials", str(creds), "--fingerprint", "AB" * 32, "--terminal", "till",
                   "--amount", "1", "--currency", "EUR")
        assert wrong.returncode == 2 and "certificate_mismatch" in wrong.stderr

        unknown = tb("pay", "--credentials", str(creds), "--fingerprint", fingerprint, "--terminal", "lost",
                     "--amount", "5", "--currency", "EUR")
        assert unknown.returncode == 3 and "UNKNOWN: check the terminal's receipt" in unknown.stdout, unknown.stdout
        payment_id = unknown.stdout.split("Payment ", 1)[1].split()[0]
        note = ("--note", "receipt shows approved, auth 123456")
        # The till's own client may not resolve: it lacks the right.
        refused = tb("resolve", payment_id, "--outcome", "approved", *note, "--credentials", str(creds),
                     "--fingerprint", fingerprint)
        assert refused.returncode == 2 and "forbidden" in refused.stderr, refused.stderr
        resolved = tb("resolve", payment_id, "--outcome", "approved", *note, "--authorisation", "123456",
                      "--credentials", str(it_creds), "--fingerprint", fingerprint)
        assert resolved.returncode == 0, resolved.stdout + resolved.stderr
        assert f"Payment {payment_id} resolved as approved by " in resolved.stdout
        assert "APPROVED: 5.00 EUR, authorisation 123456." in resolved.stdout
        again = tb("resolve", payment_id, "--outcome", "failed", *note, "--credentials", str(it_creds),
                   "--fingerprint", fingerprint)
        assert again.returncode == 2 and "not_unknown" in again.stderr
        listing = tb("-c", str(config), "payments", "--terminal", "lost")
        assert "approved" in listing.stdout and "unknown" not in listing.stdout
    finally:
        for process in (daemon, sim, lost):
            if process is not None:
                process.terminate()
                process.wait(timeout=15)
    assert daemon.returncode == 0
