"""The status page's password, sessions and lock-out (Clock-timed), its [status] settings and the CLI."""

import io
import os
import stat

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from bridge.cli.main import main
from bridge.config import ConfigError
from bridge.status import auth
from tests.support import load_config, write_config


class PasswordTests(SynchronousTestCase):
    def test_the_stored_form_is_an_scrypt_hash_that_checks_the_right_password_only(self):
        stored = auth.hash_password("correct horse battery")
        self.assertTrue(stored.startswith("scrypt$16384$8$1$"))
        self.assertNotIn("correct", stored)
        self.assertTrue(auth.check_password("correct horse battery", stored))
        self.assertFalse(auth.check_password("correct horse batterY", stored))
        self.assertNotEqual(stored, auth.hash_password("correct horse battery"))  # a new salt each time

    def test_a_damaged_password_file_lets_nobody_in(self):
        for stored in ("", "plain text", "md5$x$y", "scrypt$16384$8$1$!!$!!"):
            self.assertFalse(auth.check_password("anything", stored), stored)


class GateTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.gate = auth.Gate(self.clock)

    def test_five_wrong_passwords_lock_that_address_out_for_fifteen_minutes(self):
        for _ in range(auth.MAX_FAILURES - 1):
            self.gate.failed("10.0.0.5")
        self.assertEqual(self.gate.locked_for("10.0.0.5"), 0)
        self.gate.failed("10.0.0.5")
        self.assertEqual(self.gate.locked_for("10.0.0.5"), auth.LOCKOUT_SECONDS)
        self.assertEqual(self.gate.locked_for("10.0.0.6"), 0)
        self.clock.advance(auth.LOCKOUT_SECONDS)
        self.assertEqual(self.gate.locked_for("10.0.0.5"), 0)
        self.gate.failed("10.0.0.5")  # after the lock-out, counting starts again
        self.assertEqual(self.gate.locked_for("10.0.0.5"), 0)

    def test_a_session_ends_after_an_idle_hour_and_in_any_case_after_twelve_hours(self):
        session = self.gate.open_session("10.0.0.5")
        self.clock.advance(auth.IDLE_SECONDS - 1)
        self.assertIs(self.gate.session(session.token), session)
        self.clock.advance(auth.IDLE_SECONDS + 1)
        self.assertIsNone(self.gate.session(session.token))
        session = self.gate.open_session("10.0.0.5")
        for _ in range(auth.MAX_SESSION_SECONDS // 1800):
            self.clock.advance(1800)
            self.gate.session(session.token)
        self.assertIsNone(self.gate.session(session.token))

    def test_the_csrf_token_must_be_the_sessions_own(self):
        one, two = self.gate.open_session("a"), self.gate.open_session("b")
        self.assertTrue(auth.csrf_ok(one, one.csrf))
        self.assertFalse(auth.csrf_ok(one, two.csrf))
        self.assertFalse(auth.csrf_ok(one, ""))
        self.assertFalse(auth.csrf_ok(one, None))


class SettingsTests(SynchronousTestCase):
    def config(self, status):
        directory = self.mktemp()
        os.makedirs(directory)
        path = write_config(directory, {"till-1": "127.0.0.1:9"})
        with open(path, "a") as f:
            f.write("[status]\n" + status)
        return path

    def test_defaults_port_8766_and_the_password_in_the_state_directory(self):
        config = load_config(self.config(""))
        self.assertEqual((config.status.enabled, config.status.listen_host, config.status.listen_port),
                         (True, "0.0.0.0", 8766))
        self.assertEqual(config.status.password_file, os.path.join(config.state_dir, "status-page.password"))

    def test_every_bad_setting_is_named(self):
        error = self.assertRaises(ConfigError, load_config, self.config(
            "enabled = perhaps\nlisten = here:99999\nmetrics_token = short\nmetrics_allow = 10.0.0.0/8 lan\n"
            "colour = blue\n"))
        found = {str(p).split("] ")[1].split(":")[0] for p in error.problems}
        self.assertEqual(found, {"enabled", "listen", "metrics_token", "metrics_allow", "colour"})

    def test_the_allow_list_takes_addresses_and_networks(self):
        status = load_config(self.config("metrics_allow = 192.168.1.0/24, 10.1.2.3 ::1\n")).status
        self.assertTrue(status.may_scrape("192.168.1.77", None))
        self.assertTrue(status.may_scrape("10.1.2.3", None))
        self.assertTrue(status.may_scrape("::ffff:192.168.1.8", None))
        self.assertTrue(status.may_scrape("::1", None))
        self.assertFalse(status.may_scrape("10.1.2.4", None))
        self.assertFalse(status.may_scrape("192.168.1.77x", None))

    def test_the_bearer_token_is_compared_whole(self):
        status = load_config(self.config("metrics_token = " + "k" * 40 + "\n")).status
        self.assertTrue(status.may_scrape("10.9.9.9", b"Bearer " + b"k" * 40))
        self.assertFalse(status.may_scrape("10.9.9.9", b"Bearer " + b"k" * 39))
        self.assertFalse(status.may_scrape("10.9.9.9", b"k" * 40))
        self.assertFalse(status.may_scrape("10.9.9.9", None))


class PasswordCommandTests(SynchronousTestCase):
    def setUp(self):
        directory = self.mktemp()
        os.makedirs(directory)
        self.path = write_config(directory, {"till-1": "127.0.0.1:9"})

    def run_cli(self, password_line):
        import sys

        old = sys.stdin
        sys.stdin = io.StringIO(password_line + "\n")
        try:
            return main(["-c", self.path, "status-page", "password", "--stdin"])
        finally:
            sys.stdin = old

    def test_it_needs_a_status_section(self):
        self.assertEqual(self.run_cli("correct horse battery"), 2)

    def test_it_stores_the_hash_mode_0600_and_refuses_a_short_password(self):
        with open(self.path, "a") as f:
            f.write("[status]\n")
        password_file = load_config(self.path).status.password_file
        self.assertEqual(self.run_cli("short"), 2)
        self.assertFalse(os.path.exists(password_file))
        self.assertEqual(self.run_cli("correct horse battery"), 0)
        self.assertEqual(stat.S_IMODE(os.stat(password_file).st_mode), 0o600)
        stored = auth.read_password_file(password_file)
        self.assertTrue(auth.check_password("correct horse battery", stored))
