"""`terminal-bridge doctor`: real files, a real TCP listener and a closed port, a pty as the serial device."""

import datetime
import fcntl
import os
import socket
import sqlite3
import tempfile
from types import SimpleNamespace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bridge.api.tls import ensure_certificate, fingerprint_of_pem
from bridge.cli import doctor
from bridge.cli.doctor import FAIL, OK, WARN, Account, Context, diagnose
from bridge.cli.main import main
from bridge.core.journal import SCHEMA_VERSION, Journal, PaymentRecord
from tests.support import add_test_client, load_config, write_config

NOBODY = 65534
STRANGER = Account("stranger", 54321, frozenset({54321}))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def listener():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s.getsockname()[1]


@pytest.fixture
def pty_device():
    master, slave = os.openpty()
    yield os.ttyname(slave)
    os.close(slave)
    os.close(master)


@pytest.fixture
def context():
    return Context(timeout=2.0, account=Account.of_uid(os.geteuid()))


def lines_about(lines, topic):
    return [(level, text) for level, text in lines if text.startswith(topic)]


def only(lines, topic):
    found = lines_about(lines, topic)
    assert len(found) == 1, lines
    return found[0]


# -- the command -------------------------------------------------------------------------------------

def test_a_fresh_install_passes_with_warnings_and_exit_status_0(tmp_path, capsys):
    path = write_config(str(tmp_path), {})
    assert main(["--config", path, "doctor"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("OK    config: ")
    assert "WARN  clients: no clients yet" in out
    assert "WARN  terminals: none configured" in out
    assert "certificate: none yet" in out
    assert "journal: none yet" in out
    assert out.rstrip().endswith("Nothing failed; 2 warning(s) to read.")


def test_a_broken_config_fails_with_each_problem_and_exit_status_1(tmp_path, capsys):
    path = tmp_path / "bridge.conf"
    path.write_text("[bridge]\nlisten = nowhere:99999\nmax_connections = lots\n")
    assert main(["--config", str(path), "doctor"]) == 1
    out = capsys.readouterr().out.splitlines()
    fails = [line for line in out if line.startswith("FAIL  config: ")]
    assert any("listen" in line for line in fails) and any("max_connections" in line for line in fails)
    assert "problem(s) to fix" in out[-1]


def test_doctor_is_listed_in_the_help(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "doctor" in capsys.readouterr().out


# -- terminals ---------------------------------------------------------------------------------------

def test_a_listening_caisse_ap_tcp_terminal_is_ok_and_a_closed_port_fails(tmp_path, listener):
    dead = closed_port()
    path = write_config(str(tmp_path), {"till-1": f"127.0.0.1:{listener}", "till-2": f"127.0.0.1:{dead}"})
    lines = diagnose(path, timeout=1)
    assert only(lines, "terminal till-1") == (OK, f"terminal till-1 (caisse-ap-tcp): answers at 127.0.0.1:{listener}.")
    level, text = only(lines, "terminal till-2")
    assert level == FAIL
    assert f"127.0.0.1:{dead} refused the connection" in text and "Fix:" in text


def test_a_pty_is_present_and_openable(pty_device, context):
    lines = doctor.check_caisse_ap_serial({"device": pty_device}, context)
    assert (OK, f"{pty_device} is present and can be opened.") in lines
    assert all(level != FAIL for level, _ in lines)


def test_a_serial_terminal_in_the_configuration_is_checked_on_its_device(tmp_path, pty_device):
    path = write_config(str(tmp_path), {}, extra=f"[terminal:desk]\ntype = caisse-ap-serial\ndevice = {pty_device}")
    lines = lines_about(diagnose(path), "terminal desk")
    assert (OK, f"terminal desk (caisse-ap-serial): {pty_device} is present and can be opened.") in lines


def test_a_device_outside_the_sandbox_classes_gets_the_drop_in_to_add(pty_device, context):
    lines = doctor.check_caisse_ap_serial({"device": pty_device}, context)
    warnings = [text for level, text in lines if level == WARN]
    assert any(f"DeviceAllow={os.path.realpath(pty_device)} rw" in text for text in warnings)


def test_a_serial_device_held_by_another_program_is_a_warning(pty_device, context):
    fd = os.open(pty_device, os.O_RDWR | os.O_NOCTTY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lines = doctor.check_caisse_ap_serial({"device": pty_device}, context)
    finally:
        os.close(fd)
    assert any(level == WARN and "in use by another program" in text for level, text in lines)
    assert not any(level == OK and "can be opened" in text for level, text in lines)


def test_a_missing_serial_device_fails(context, tmp_path):
    lines = doctor.check_caisse_ap_serial({"device": str(tmp_path / "ttyUSB9")}, context)
    assert lines[0][0] == FAIL and "does not exist" in lines[0][1] and "/dev/serial/by-id/" in lines[0][1]


def test_a_regular_file_is_not_a_serial_device(context, tmp_path):
    fake = tmp_path / "ttyUSB0"
    fake.write_text("")
    assert doctor.check_caisse_ap_serial({"device": str(fake)}, context)[0] == \
        (FAIL, f"{fake} is not a serial device. Fix: set device to the terminal's port, e.g. /dev/ttyUSB0 or a name "
               "under /dev/serial/by-id/.")


def test_a_serial_device_the_service_account_may_not_open_fails_with_the_group_to_join(pty_device):
    lines = doctor.check_caisse_ap_serial({"device": pty_device}, Context(1.0, STRANGER))
    fails = [text for level, text in lines if level == FAIL]
    assert len(fails) == 1 and "usermod -aG" in fails[0] and "stranger" in fails[0]


@pytest.mark.parametrize("key, words", [
    ("pk_live_" + "a" * 40, "publishable key"),
    ("hello", "does not hold a Stripe API key"),
])
def test_a_key_file_without_a_usable_stripe_key_fails_before_asking_stripe(tmp_path, context, key, words):
    path = tmp_path / "stripe-api-key"
    path.write_text(key + "\n")
    [(level, text)] = doctor.check_stripe({"api_key_file": str(path), "reader": "tmr_x"}, context)
    assert level == FAIL and words in text and "a" * 20 not in text


def test_a_missing_stripe_key_file_fails(tmp_path, context):
    lines = doctor.check_stripe({"api_key_file": str(tmp_path / "nope"), "reader": "tmr_x"}, context)
    assert lines == [(FAIL, f"the key file {tmp_path / 'nope'} does not exist. Fix: put the Stripe key in it "
                            "(mode 600).")]


def test_a_stripe_credential_the_unit_does_not_load_fails_with_the_line_to_add(tmp_path, context, monkeypatch):
    unit = tmp_path / "terminal-bridge.service"
    unit.write_text("[Service]\n#LoadCredential=stripe-api-key:/etc/terminal-bridge/stripe-api-key\n")
    monkeypatch.setattr(doctor, "UNIT_FILES", (str(unit),))
    [(level, text)] = doctor.check_stripe({"api_key_credential": "stripe-api-key"}, context)
    assert level == FAIL and "LoadCredential=stripe-api-key:/etc/terminal-bridge/stripe-api-key" in text


def test_a_type_without_a_check_is_a_warning_not_a_failure(context):
    assert doctor.terminal_check("no-such-type") is None
    assert doctor._check_terminal("no-such-type", {}, context)[0][0] == WARN


def test_a_check_that_crashes_is_reported_and_the_others_still_run(monkeypatch, tmp_path, listener):
    def crash(options, ctx):
        raise RuntimeError("boom")

    monkeypatch.setitem(doctor.TERMINAL_CHECKS, "caisse-ap-tcp", crash)
    path = write_config(str(tmp_path), {"till-1": f"127.0.0.1:{listener}"})
    lines = diagnose(path)
    assert only(lines, "terminal till-1")[0] == WARN
    assert only(lines, "journal")[0] == OK


# -- certificate -------------------------------------------------------------------------------------

def make_certificate(cert_path, key_path, days_valid=365, starts_in_days=0, key=None):
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    start = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=starts_in_days)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start - datetime.timedelta(days=1))
            .not_valid_after(start + datetime.timedelta(days=days_valid))
            .sign(key, hashes.SHA256()))
    os.makedirs(os.path.dirname(cert_path), exist_ok=True)
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))


@pytest.fixture
def config(tmp_path):
    return load_config(write_config(str(tmp_path), {}))


def certificate_line(config):
    lines = doctor.check_certificate(config, Account.of_uid(os.geteuid()))
    assert len(lines) == 1, lines
    return lines[0]


def test_a_good_generated_certificate_shows_its_fingerprint(config):
    ensure_certificate(config.tls_certificate, config.tls_key)
    with open(config.tls_certificate, "rb") as f:
        fingerprint = fingerprint_of_pem(f.read())
    level, text = certificate_line(config)
    assert level == OK and fingerprint in text and "the key matches" in text


def test_a_certificate_that_is_not_pem_fails_with_how_to_make_a_new_one(config):
    ensure_certificate(config.tls_certificate, config.tls_key)
    with open(config.tls_certificate, "w") as f:
        f.write("not a certificate")
    level, text = certificate_line(config)
    assert level == FAIL and "is not a PEM certificate" in text and f"delete {config.tls_certificate}" in text


def test_a_key_of_another_certificate_fails(config):
    ensure_certificate(config.tls_certificate, config.tls_key)
    make_certificate(config.tls_certificate + ".other", config.tls_key)  # overwrites the key only
    level, text = certificate_line(config)
    assert level == FAIL and "does not belong to the certificate" in text


def test_a_missing_generated_key_warns_that_the_fingerprint_will_change(config):
    ensure_certificate(config.tls_certificate, config.tls_key)
    os.unlink(config.tls_key)
    level, text = certificate_line(config)
    assert level == WARN and "new fingerprint" in text


@pytest.mark.parametrize("dates, level, words", [
    ({"days_valid": 10}, WARN, "expires in"),  # ending within 30 days
    ({"days_valid": 5, "starts_in_days": -30}, FAIL, "expired on"),
    ({"starts_in_days": 3}, FAIL, "clock"),  # not valid yet: the clock is the likelier culprit
])
def test_certificate_dates(config, dates, level, words):
    make_certificate(config.tls_certificate, config.tls_key, **dates)
    got, text = certificate_line(config)
    assert got == level and words in text, text


# -- journal and disk --------------------------------------------------------------------------------

def journal_lines(config):
    return lines_about(doctor.check_journal(config, Account.of_uid(os.geteuid())), "journal")


def test_an_intact_journal_is_ok_with_its_schema(config):
    Journal.open(config.journal_path, threaded=False).close()
    assert journal_lines(config) == [(OK, f"journal: {config.journal_path} is intact (schema {SCHEMA_VERSION}).")]


def test_a_corrupt_journal_fails_and_says_to_keep_a_copy(config):
    os.makedirs(config.state_dir, exist_ok=True)
    with open(config.journal_path, "wb") as f:
        f.write(b"this is not sqlite at all" * 100)
    [(level, text)] = journal_lines(config)
    assert level == FAIL and "is damaged" in text and "somewhere safe" in text


def test_a_journal_from_a_newer_bridge_fails(config):
    Journal.open(config.journal_path, threaded=False).close()
    with sqlite3.connect(config.journal_path) as conn:
        conn.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    conn.close()
    [(level, text)] = journal_lines(config)
    assert level == FAIL and "newer terminal-bridge" in text


def test_payments_of_unknown_outcome_are_a_warning(config):
    journal = Journal.open(config.journal_path, threaded=False)
    record = PaymentRecord("pay_1", "cmd-1", "cl_pos", "till-1", "debit", "card", 100, "EUR", "x", "unknown")
    journal.create(record, {"event": "payment"}, actor="test")
    journal.close()
    assert (WARN, "journal: 1 payment(s) have an unknown outcome and wait for someone to resolve them. "
                  "See them with: terminal-bridge payments --state unknown") in journal_lines(config)


def test_the_journal_is_checked_for_the_service_account(config):
    Journal.open(config.journal_path, threaded=False).close()
    lines = lines_about(doctor.check_journal(config, STRANGER), "journal")
    assert any(level == FAIL and "stranger cannot write" in text for level, text in lines)


def test_a_nearly_full_disk_fails(config, monkeypatch):
    full = os.statvfs(os.path.dirname(config.path))
    monkeypatch.setattr(os, "statvfs", lambda path: SimpleNamespace(f_bavail=10, f_frsize=full.f_frsize))
    [(level, text)] = doctor.check_disk(config.state_dir)
    assert level == FAIL and "journalctl --vacuum-size" in text


# -- who may read what -------------------------------------------------------------------------------

@pytest.fixture
def open_dir():
    """A directory every account may enter (pytest's tmp_path sits in a 0700 one)."""
    directory = tempfile.mkdtemp(prefix="tb-doctor-")
    os.chmod(directory, 0o755)
    yield directory
    import shutil

    shutil.rmtree(directory)


def test_account_permissions_follow_owner_group_and_other_bits(open_dir):
    path = os.path.join(open_dir, "f")
    with open(path, "w") as f:
        f.write("x")
    st = os.stat(path)
    owner = Account("owner", 54000, frozenset())
    if os.geteuid() == 0:
        os.chown(path, owner.uid, st.st_gid)
    member = Account("member", 54001, frozenset({st.st_gid}))
    other = Account("other", 54002, frozenset())
    os.chmod(path, 0o640)
    if os.geteuid() == 0:
        assert owner.can(path, os.R_OK | os.W_OK)
    assert member.can(path, os.R_OK) and not member.can(path, os.W_OK)
    assert not other.can(path, os.R_OK)
    os.chmod(path, 0o604)
    assert other.can(path, os.R_OK) and not member.can(path, os.R_OK)


def test_a_directory_the_account_cannot_enter_hides_the_file(open_dir):
    from pathlib import Path

    directory = Path(open_dir) / "d"
    directory.mkdir()
    (directory / "f").write_text("x")
    os.chmod(directory / "f", 0o644)
    os.chmod(directory, 0o700)
    assert not STRANGER.can(str(directory / "f"), os.R_OK)
    os.chmod(directory, 0o711)
    assert STRANGER.can(str(directory / "f"), os.R_OK)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="changes file owners")


@pytest.fixture
def shop(open_dir):
    """A configuration whose state directory belongs to another account, as in the .deb (nobody here)."""
    path = write_config(open_dir, {})
    state = os.path.join(open_dir, "state")
    os.mkdir(state, 0o750)
    os.chown(state, NOBODY, NOBODY)
    return path


@needs_root
def test_a_clients_file_the_service_cannot_read_fails_with_the_chown_to_run(shop):
    add_test_client(shop)  # written by root, mode 600, owned by root
    level, text = only(diagnose(shop), "clients")
    assert level == FAIL and "cannot read" in text and f"chown {Account.of_uid(NOBODY).name}:" in text


@needs_root
def test_client_add_run_as_root_gives_the_file_to_the_service(shop, capsys):
    assert main(["--config", shop, "client", "add", "pos"]) == 0
    assert only(diagnose(shop), "clients")[0] == OK
