import os

import pytest

from bridge.config import ConfigError, add_client, load
from bridge.terminals.catalogue import VALIDATORS


def write(tmp_path, text, name="bridge.conf"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def problems(path):
    with pytest.raises(ConfigError) as info:
        load(path, VALIDATORS)
    return [str(p) for p in info.value.problems]


def test_a_minimal_config_loads_with_defaults(tmp_path):
    config = load(write(tmp_path, "[bridge]\n[terminal:till-1]\ntype = caisse-ap-tcp\naddress = 10.0.0.5\n"),
                  VALIDATORS)
    assert (config.listen_host, config.listen_port) == ("0.0.0.0", 8443)
    assert config.terminals["till-1"].options["address"] == "10.0.0.5"
    assert config.clients == {}
    assert config.retention_days == 90
    assert config.cpu == "auto"
    assert config.tls_certificate.endswith("tls/bridge.crt")


@pytest.mark.parametrize("written, taken", [("auto", "auto"), ("", "auto"), ("ALL", "all"), ("all", "all"),
                                            ("0", 0), ("3", 3)])
def test_the_cpu_setting(tmp_path, written, taken):
    assert load(write(tmp_path, f"[bridge]\ncpu = {written}\n"), VALIDATORS).cpu == taken


@pytest.mark.parametrize("written", ["any", "-1", "1,2", "0-3", "1.5", "99999"])
def test_a_cpu_setting_that_is_not_one_is_a_problem(tmp_path, written):
    assert problems(write(tmp_path, f"[bridge]\ncpu = {written}\n")) == [
        f"{tmp_path / 'bridge.conf'} [bridge] cpu: must be auto, all or a CPU's number (0, 1, ...)"]


def test_every_problem_is_named_with_section_and_key(tmp_path):
    path = write(tmp_path, """
[bridge]
listen = 0.0.0.0:99999
max_message_bytes = lots
log_level = chatty
colour = blue
tls_certificate = /nonexistent.pem
[terminal:till-1]
type = caisse-ap-tcp
[terminal:till-2]
type = teleport
[something]
""")
    found = "\n".join(problems(path))
    for expected in ("[bridge] listen", "[bridge] max_message_bytes", "[bridge] log_level", "[bridge] colour",
                     "[bridge] tls_key", "[bridge] tls_certificate", "[terminal:till-1] address",
                     "[terminal:till-2] type", "[something]"):
        assert expected in found, expected


def test_a_missing_or_broken_file_is_a_problem_not_a_crash(tmp_path):
    assert "does not exist" in problems(str(tmp_path / "nope.conf"))[0]
    assert "not a valid INI" in problems(write(tmp_path, "no section here\n"))[0]


def test_clients_are_checked(tmp_path):
    path = write(tmp_path, "[bridge]\n")
    clients = write(tmp_path, """
[client:a]
id = cl_a
secret_in = short
secret_out = short
algorithm = sha1
rights = pay,fly
[client:b]
id = cl_a
secret_in = xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx
secret_out = xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx
""", name="clients.conf")
    os.chmod(clients, 0o600)
    found = "\n".join(problems(path))
    for expected in ("[client:a] secret_in", "[client:a] algorithm", "[client:a] rights", "[client:b] id",
                     "[client:b] secret_out"):
        assert expected in found, expected


def test_a_clients_file_readable_by_others_is_refused(tmp_path):
    path = write(tmp_path, "[bridge]\n")
    add_client(str(tmp_path / "clients.conf"), "pos", "cl_pos", "a" * 64, "b" * 64)
    assert os.stat(tmp_path / "clients.conf").st_mode & 0o777 == 0o600
    assert load(path, VALIDATORS).clients["pos"].rights == frozenset({"pay", "read"})
    os.chmod(tmp_path / "clients.conf", 0o644)
    assert "chmod 600" in problems(path)[0]


def test_adding_a_client_twice_is_refused(tmp_path):
    add_client(str(tmp_path / "clients.conf"), "pos", "cl_pos", "a" * 64, "b" * 64)
    with pytest.raises(ValueError):
        add_client(str(tmp_path / "clients.conf"), "pos", "cl_other", "a" * 64, "b" * 64)


def test_relative_file_options_of_terminals_are_taken_from_the_config_directory(tmp_path):
    (tmp_path / "key").write_text("sk_test_x\n")
    path = write(tmp_path, "[bridge]\n[terminal:r]\ntype = stripe\nreader = tmr_1\napi_key_file = key\n")
    config = load(path, VALIDATORS)
    assert config.terminals["r"].options["api_key_file"] == str(tmp_path / "key")
