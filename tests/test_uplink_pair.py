"""`terminal-bridge uplink pair`: the one-time code exchange with (fake) Odoo over real TLS, and what it writes."""

import json
import os
import stat
import sys

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase

from bridge.errors import BridgeError
from bridge.uplink.https import HTTPS, TLSPolicy
from bridge.uplink.pairing import normalize_code, pair, parse_answer, replace_section
from tests.daemon_process import REPO
from tests.fake_odoo import FakeOdoo, make_private_ca
from tests.support import load_config, write_config

TOKEN = "c0ffee0123456789abcdef01"


class Code(SynchronousTestCase):
    def test_dashes_spaces_and_case_do_not_matter(self):
        self.assertEqual(normalize_code("k7qd-m2xp 9rwt-HV4C"), "K7QDM2XP9RWTHV4C")

    def test_a_code_that_cannot_be_one_is_refused_before_anything_is_sent(self):
        for text in ("K7QD-M2XP-9RWT", "K7QD-M2XP-9RWT-HV4O", "K7QD-M2XP-9RWT-HV4C-1"):  # short, O, long
            with self.assertRaises(BridgeError) as e:
                normalize_code(text)
            self.assertEqual(e.exception.code, "bad_code")


class Section(SynchronousTestCase):
    CONF = ("# the shop's bridge\n[bridge]\nname = shop-box ; the box\n\n"
            "[uplink:odoo-shop]\n# paired on Monday\nurl = https://old.example.com\nfetch_interval = 10\n"
            "ca_file = /old.pem\n\n# the till by the door\n[terminal:till-1]\ntype = caisse-ap-tcp\n")

    def test_a_new_section_is_appended_and_the_file_kept(self):
        text = replace_section("[bridge]\nname = x\n", "uplink:odoo-b", ["url = https://b"])
        self.assertEqual(text, "[bridge]\nname = x\n\n[uplink:odoo-b]\nurl = https://b\n")

    def test_pairing_again_replaces_the_section_in_place_keeping_comments_and_other_keys(self):
        text = replace_section(self.CONF, "uplink:odoo-shop", ["url = https://new.example.com", "client = c"])
        self.assertEqual(text, "# the shop's bridge\n[bridge]\nname = shop-box ; the box\n\n"
                               "[uplink:odoo-shop]\nurl = https://new.example.com\nclient = c\n# paired on Monday\n"
                               "fetch_interval = 10\n\n# the till by the door\n[terminal:till-1]\n"
                               "type = caisse-ap-tcp\n")


class Answer(SynchronousTestCase):
    def refused(self, code, body=b""):
        with self.assertRaises(BridgeError) as e:
            parse_answer(code, body, "shop")
        return e.exception

    def test_every_error_of_the_contract_has_its_words(self):
        for status, name, words in ((400, "bad_request", "could not read"), (403, "wrong_code", "no such"),
                                    (410, "expired_code", "expired"), (409, "used_code", "already used"),
                                    (429, "too_many_attempts", "wait a minute")):
            body = json.dumps({"error": {"code": name, "message": "x"}}).encode()
            for answer in (body, b"<html>"):  # with Odoo's JSON, and from the status alone
                error = self.refused(status, answer)
                self.assertEqual(error.code, name)
                self.assertIn(words, error.message.lower())

    def test_a_missing_module_and_a_restarting_odoo_are_told_apart(self):
        self.assertIn("install the 'Terminal bridge' module", self.refused(404).message)
        error = self.refused(502)
        self.assertIn("not reachable behind its proxy (502)", error.message)
        self.assertNotIn("database", error.message)

    def test_an_answer_with_weak_or_missing_secrets_is_refused(self):
        answer = {"client": {"id": "cl_1", "secret_in": "a" * 64, "secret_out": "short"},
                  "uplink": {"channel_token": "t" * 32, "feedback_secret": "f" * 32}}
        error = self.refused(200, json.dumps(answer).encode())
        self.assertEqual(error.code, "bad_answer")
        self.assertIn("secret_out", error.message)


class OdooCase(TestCase):
    timeout = 30

    @inlineCallbacks
    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.tls = make_private_ca(self.dir, "odoo")
        self.odoo = FakeOdoo(reactor, "shop", "terminal_bridge-" + TOKEN, "cl_paired0001", "i" * 64, "o" * 64,
                             "Feedback-Passphrase-0123456789")
        self.port = yield self.odoo.listen(self.tls["cert"], self.tls["key"])
        self.addCleanup(self.port.stopListening)
        self.addCleanup(self.odoo.stop)
        self.url = f"https://127.0.0.1:{self.port.getHost().port}"


class Exchange(OdooCase):
    """The exchange alone, in this process: each refusal of the contract, in words."""

    def exchange(self, code, database="shop"):
        https = HTTPS(reactor, TLSPolicy(self.tls["ca"]), timeout=5)
        self.addCleanup(https.close)
        return pair(https, self.url, database, normalize_code(code), "shop-box", "AB:CD")

    @inlineCallbacks
    def refused(self, code, database="shop"):
        try:
            yield self.exchange(code, database)
        except BridgeError as e:
            return e
        self.fail("paired")

    @inlineCallbacks
    def test_a_right_code_gives_the_secrets_once(self):
        code = self.odoo.new_pairing_code()
        result = yield self.exchange(code)
        self.assertEqual((result.client_id, result.secret_in, result.channel_token, result.database),
                         ("cl_paired0001", "i" * 64, TOKEN, "shop"))
        request = self.odoo.pair_requests[0]["body"]
        self.assertEqual(request["code"], code.replace("-", ""))
        self.assertEqual(request["bridge"]["name"], "shop-box")
        again = yield self.refused(code)
        self.assertEqual(again.code, "used_code")

    @inlineCallbacks
    def test_an_expired_code(self):
        code = self.odoo.new_pairing_code(ttl=-1)
        error = yield self.refused(code)
        self.assertEqual(error.code, "expired_code")
        self.assertIn("10 minutes", error.message)

    @inlineCallbacks
    def test_ten_wrong_codes_lock_pairing_for_the_minute_even_for_the_right_code(self):
        code = self.odoo.new_pairing_code()
        for _ in range(10):
            error = yield self.refused("AAAA-AAAA-AAAA-AAAA")
            self.assertEqual(error.code, "wrong_code")
        error = yield self.refused(code)
        self.assertEqual(error.code, "too_many_attempts")
        self.assertFalse(self.odoo.pair_code["used"])

    @inlineCallbacks
    def test_a_wrong_database_is_named(self):
        self.odoo.new_pairing_code()
        error = yield self.refused("AAAA-AAAA-AAAA-AAAA", database="other")
        self.assertEqual(error.code, "unknown_database")
        self.assertIn("--database", error.message)
        self.assertEqual(self.odoo.pair_requests, [])


class Command(OdooCase):
    """The real command, as an installer types it, in its own process."""

    @inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.config_path = write_config(self.dir, {}, extra="name = shop-box\n# keep this comment")

    def command(self, *args, config=None):
        env = {k: v for k, v in os.environ.items() if k != "TERMINAL_BRIDGE_CONFIG"}
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        argv = ["-m", "bridge", "-c", config or self.config_path, "uplink", "pair", *args]
        return getProcessOutputAndValue(sys.executable, argv, env=env, path=REPO)

    def pair(self, code, *extra):
        return self.command(self.url, code, "--database", "shop", "--ca-file", self.tls["ca"], *extra)

    def read(self, name):
        with open(os.path.join(self.dir, name)) as f:
            return f.read()

    @inlineCallbacks
    def test_pairing_writes_client_secrets_and_section_that_the_bridge_loads(self):
        out, err, code = yield self.pair(self.odoo.new_pairing_code())
        self.assertEqual(code, 0, err)
        self.assertIn(b"as uplink 'odoo-shop'", out)
        self.assertIn(b"No running bridge was found", err)  # and what to do about it
        self.assertIn(b"systemctl start", err)
        for name in ("clients.conf", "uplink-odoo-shop.secrets"):
            self.assertEqual(stat.S_IMODE(os.stat(os.path.join(self.dir, name)).st_mode), 0o600)
        self.assertIn("# keep this comment", self.read("bridge.conf"))
        config = load_config(self.config_path)
        uplink = config.uplinks["odoo-shop"]
        self.assertEqual((uplink.url, uplink.database, uplink.client, uplink.channel_token, uplink.ca_file),
                         (self.url, "shop", "odoo-shop", TOKEN, self.tls["ca"]))
        self.assertEqual(uplink.feedback_secret, self.odoo.feedback_secret)
        client = config.clients["odoo-shop"]
        self.assertEqual((client.id, client.secret_in, client.secret_out, client.rights),
                         ("cl_paired0001", "i" * 64, "o" * 64, frozenset({"pay", "read"})))

    @inlineCallbacks
    def test_pairing_again_replaces_the_secrets_in_place(self):
        out, err, code = yield self.pair(self.odoo.new_pairing_code())
        self.assertEqual(code, 0, err)
        with open(self.config_path, "a") as f:
            f.write("fetch_interval = 7\n")  # the installer's own setting in the uplink's section
        self.odoo.rotate_secrets()
        out, err, code = yield self.pair(self.odoo.new_pairing_code())
        self.assertEqual(code, 0, err)
        self.assertIn(b"replaced", out)
        self.assertEqual(self.read("bridge.conf").count("[uplink:odoo-shop]"), 1)
        config = load_config(self.config_path)
        self.assertEqual(config.uplinks["odoo-shop"].fetch_interval, 7)
        self.assertEqual(config.uplinks["odoo-shop"].feedback_secret, self.odoo.feedback_secret)
        self.assertEqual(config.clients["odoo-shop"].secret_in, self.odoo.secret_in)
        self.assertEqual(len(config.clients), 1)

    @inlineCallbacks
    def test_a_refused_code_writes_nothing_and_says_why(self):
        self.odoo.new_pairing_code()
        before = self.read("bridge.conf")
        out, err, code = yield self.pair("AAAA-AAAA-AAAA-AAAA")
        self.assertEqual(code, 1)
        self.assertIn(b"Odoo knows no such pairing code", err)
        self.assertEqual(self.read("bridge.conf"), before)
        self.assertFalse(os.path.exists(os.path.join(self.dir, "clients.conf")))

    @inlineCallbacks
    def test_without_the_ca_file_the_self_signed_front_is_refused_in_words(self):
        out, err, code = yield self.command(self.url, self.odoo.new_pairing_code(), "--database", "shop")
        self.assertEqual(code, 1)
        self.assertIn(b"certificate", err)
        self.assertIn(b"--ca-file", err)
        self.assertEqual(self.odoo.pair_requests, [])

    @inlineCallbacks
    def test_a_plain_http_address_is_refused_before_anything_is_sent(self):
        http_url = self.url.replace("https://", "http://")
        out, err, code = yield self.command(http_url, self.odoo.new_pairing_code(), "--database", "shop")
        self.assertEqual(code, 2, err)
        self.assertIn(b"https only", err)
        self.assertEqual((self.odoo.logins, self.odoo.pair_requests), (0, []))
        self.assertFalse(os.path.exists(os.path.join(self.dir, "clients.conf")))

    @inlineCallbacks
    def test_a_mistyped_code_is_refused_before_anything_is_sent(self):
        out, err, code = yield self.pair("K7QD-M2XP")
        self.assertEqual(code, 2)
        self.assertIn(b"is not a pairing code", err)
        self.assertEqual(self.odoo.logins, 0)
