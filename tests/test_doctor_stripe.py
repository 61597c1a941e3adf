"""`terminal-bridge doctor` on a Stripe reader: the real stripe library against the local fake of Stripe.

The doctor blocks (it is a command), so each check runs on a thread while the reactor serves the fake.
"""

import os

from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread

from bridge.cli import doctor
from bridge.cli.doctor import FAIL, OK, WARN, Account, Context
from tests.stripe_support import KEY, SERIAL, StripeTestCase


class DoctorStripeTests(StripeTestCase):
    def setUp(self):
        d = super().setUp()
        self.context = Context(timeout=3.0, account=Account.of_uid(os.geteuid()))
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        return d

    def key_file(self, key=KEY):
        path = os.path.join(self.directory, "stripe.key")
        with open(path, "w") as f:
            f.write(key + "\n")
        return path

    def check(self, key=KEY, **options):
        if "api_key_file" not in options:
            options["api_key_file"] = self.key_file(key)
        options.setdefault("serial_number", SERIAL)
        if "api_base" not in options:
            options["api_base"] = self.fake.url
        return deferToThread(doctor.check_stripe, options, self.context)

    @inlineCallbacks
    def test_a_key_stripe_takes_and_a_known_online_reader_are_ok(self):
        lines = yield self.check()
        self.assertEqual(lines, [(OK, f"Stripe takes the key (test mode); reader {self.reader['id']} (Till 1) is "
                                      "online.")])

    @inlineCallbacks
    def test_the_reader_may_be_named_by_its_id(self):
        lines = yield self.check(serial_number="", reader=self.reader["id"])
        self.assertEqual(lines[0][0], OK)

    @inlineCallbacks
    def test_an_offline_reader_is_a_warning(self):
        self.fake.set_online(self.reader["id"], False)
        [(level, text)] = yield self.check()
        self.assertEqual(level, WARN)
        self.assertIn("is offline", text)

    @inlineCallbacks
    def test_a_key_stripe_refuses_fails(self):
        self.fake.keys = {KEY}
        [(level, text)] = yield self.check(key="rk_test_" + "z" * 30)
        self.assertEqual(level, FAIL)
        self.assertIn("Stripe refuses the key", text)

    @inlineCallbacks
    def test_a_key_without_terminal_rights_fails(self):
        self.fake.forbidden_keys.add(KEY)
        [(level, text)] = yield self.check()
        self.assertEqual(level, FAIL)
        self.assertIn("Terminal and PaymentIntents", text)

    @inlineCallbacks
    def test_a_serial_number_stripe_does_not_know_fails(self):
        [(level, text)] = yield self.check(serial_number="NOPE123")
        self.assertEqual(level, FAIL)
        self.assertIn("no reader with serial number NOPE123", text)

    @inlineCallbacks
    def test_a_reader_id_stripe_does_not_know_fails(self):
        [(level, text)] = yield self.check(serial_number="", reader="tmr_nothere")
        self.assertEqual(level, FAIL)
        self.assertIn("no reader tmr_nothere", text)

    @inlineCallbacks
    def test_stripe_out_of_reach_fails_with_the_network_to_check(self):
        url = self.fake.url
        yield self.fake.stop()
        [(level, text)] = yield self.check(api_base=url)
        self.assertEqual(level, FAIL)
        self.assertIn("cannot reach Stripe", text)

    @inlineCallbacks
    def test_a_full_live_secret_key_works_but_draws_a_warning(self):
        self.fake.livemode_keys = True
        live = "sk_live_" + "c" * 30
        lines = yield self.check(key=live)
        self.assertEqual([level for level, _ in lines], [WARN, OK])
        self.assertIn("restricted key", lines[0][1])
        self.assertNotIn("c" * 20, " ".join(text for _, text in lines))

    @inlineCallbacks
    def test_a_key_given_as_a_credential_is_found_through_the_units_drop_in(self):
        unit = os.path.join(self.directory, "terminal-bridge.service")
        with open(unit, "w") as f:
            f.write("[Service]\n#LoadCredential=stripe-api-key:/nowhere\n")
        dropins = os.path.join(self.directory, "terminal-bridge.service.d")
        os.makedirs(dropins)
        with open(os.path.join(dropins, "override.conf"), "w") as f:
            f.write(f"[Service]\nLoadCredential=stripe-api-key:{self.key_file()}\n")
        self.patch(doctor, "UNIT_FILES", (unit, dropins))
        lines = yield self.check(api_key_file="", api_key_credential="stripe-api-key")
        self.assertEqual([level for level, _ in lines], [OK], lines)
