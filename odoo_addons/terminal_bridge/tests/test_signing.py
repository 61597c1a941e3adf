"""The addon's signatures agree with the bridge's (bridge/api/signing.py, bridge/uplink/feedback.py)."""

import json
import os
import subprocess

from odoo.tests import BaseCase, tagged

from ..tools import signing
from .bridge_process import bridge_source

SECRET = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
#: Non-ASCII, nesting, null, booleans and key order: what canonical JSON is about.
MESSAGE = {
    "id": "odoo-1",
    "op": "payment.start",
    "ts": 1714557601,
    "args": {
        "terminal": "caisse-\u00e9",
        "amount": 1234,
        "currency": "EUR",
        "nested": {"b": [1, "\u00fc"], "a": None, "c": True},
    },
}
# Computed by the bridge's own bridge/api/signing.py (sign(MESSAGE, SECRET[, "sha512"])).
BRIDGE_SHA256 = "722342af3373ad61f2b74a18eadea7dec1179ccbd93b432d73d57fdd1faa0d57"
BRIDGE_SHA512 = (
    "c64c361e232f427b9e7019c01e5e3196c56535c5baf32c0dd0d2789169248ee4"
    "d41b0158ef97ddb897f228bc5b44440ce680bbf8276d257c2da6b9bb10658420"
)
FEEDBACK = {
    "ORDERID": "odoo-1", "PAYID": "pay_1", "AMOUNT": "12.34", "CURRENCY": "EUR", "STATUS": "9", "NCERROR": "0",
    "CARDNO": "497010XXXXXX1234", "PM": "CreditCard", "BRAND": "CB", "ACCEPTANCE": "123456", "TRXDATE": "05/01/24",
    "TBBRIDGE": "shop-box", "TBSEQ": "17", "TBSTATE": "approved", "TBTERMINAL": "till-1", "TBKIND": "debit",
    "TBMESSAGE": "Paiement accept\u00e9", "TBREASON": "",
}
# Computed by bridge/uplink/feedback.py: sha_sign(FEEDBACK, PASSPHRASE, hash, FEEDBACK_KEYS).
PASSPHRASE = "a-long-random-passphrase"
BRIDGE_SHASIGN_512 = (
    "B9CDEBE64095DCAA57594031DFB0A52D4535A0C4D2FF9E5385B4369DF3178926"
    "F5B4C603B9F77EFE39E9E18E4C44798FD4CDD2990BAEC4F520938927499EB818"
)
BRIDGE_SHASIGN_256 = "23849DE69A9B9ECE128770E419D8FC1F5C236C6FAE602EE58483C921BAECE6D0"
OGONE = {
    "AAVADDRESS": "NO", "amount": "1111.11", "CARDNO": "XXXXXXXXXXXX1111", "CN": "Dummy Customer Name",
    "currency": "USD", "IP": "101.00.111.22", "NCERROR": "0", "orderID": "Test Transaction",
    "PAYID": "01234567899", "PM": "CreditCard", "STATUS": "9", "TRXDATE": "01/31/22",
}


@tagged("post_install", "-at_install")
class TestSigning(BaseCase):
    def test_protocol_worked_example(self):
        # docs/protocol.md, "Signatures".
        message = {"id": "cmd-1", "op": "hello", "ts": 1700000000, "args": {"client": "cl_pos"}}
        self.assertEqual(signing.canonical(message), b'{"args":{"client":"cl_pos"},"id":"cmd-1","op":"hello","ts":1700000000}')
        self.assertEqual(signing.sign(message, SECRET), "c0485357267967d1c0d638dbdaa52ea90ff8bba146db2c5b33c981afd0f58da2")

    def test_bridge_vectors(self):
        self.assertEqual(signing.sign(MESSAGE, SECRET), BRIDGE_SHA256)
        self.assertEqual(signing.sign(MESSAGE, SECRET, "sha512"), BRIDGE_SHA512)
        self.assertTrue(signing.verify(dict(MESSAGE, sig=BRIDGE_SHA256), SECRET))
        self.assertTrue(signing.verify(dict(MESSAGE, sig=BRIDGE_SHA256.upper()), SECRET))

    def test_verify_refuses(self):
        good = signing.signed(MESSAGE, SECRET)
        self.assertFalse(signing.verify(dict(good, ts=good["ts"] + 1), SECRET))
        self.assertFalse(signing.verify(good, SECRET[:-1] + "0"))
        self.assertFalse(signing.verify({k: v for k, v in good.items() if k != "sig"}, SECRET))
        self.assertFalse(signing.verify(dict(good, sig=None), SECRET))
        self.assertFalse(signing.verify(dict(good, sig="\u00e9" * 64), SECRET))
        self.assertFalse(signing.verify(good, SECRET, "sha1"))
        self.assertFalse(signing.verify(good, ""))
        self.assertFalse(signing.verify(dict(good, x=float("nan")), SECRET))

    def test_ogone_vector(self):
        # docs/cloud-protocol.md: Ogone's own vector (no TB... names in it, so both lists agree).
        self.assertEqual(signing.sha_out(OGONE, "dummy", "sha1"), "2CE444D2260D914EA7E56450B7B28F189238553B")
        self.assertEqual(
            signing.sha_out(OGONE, "dummy", "sha512"),
            "864CD9391546CB490845C38EC8581BD365E0BE5B2BD20FFCE15724F281F00BE8CC2F54B33777F3440E619CFC28EA50FE4C"
            "76432FB4356F9C026E575A87AC29D0",
        )

    def test_bridge_feedback_vectors(self):
        self.assertEqual(signing.sha_out(FEEDBACK, PASSPHRASE, "sha512"), BRIDGE_SHASIGN_512)
        self.assertEqual(signing.sha_out(FEEDBACK, PASSPHRASE, "sha256"), BRIDGE_SHASIGN_256)
        self.assertTrue(signing.sha_out_verify(dict(FEEDBACK, SHASIGN=BRIDGE_SHASIGN_512), PASSPHRASE))
        self.assertFalse(signing.sha_out_verify(dict(FEEDBACK, SHASIGN=BRIDGE_SHASIGN_512, STATUS="2"), PASSPHRASE))
        self.assertFalse(signing.sha_out_verify(dict(FEEDBACK, SHASIGN=BRIDGE_SHASIGN_512), PASSPHRASE + "x"))
        self.assertFalse(signing.sha_out_verify(FEEDBACK, PASSPHRASE))

    def test_tbclient_signed_or_not(self):
        # A bridge that signs TBCLIENT and one whose list does not are both accepted; anything else is not.
        with_client = dict(FEEDBACK, TBCLIENT="cl_1")
        signed_in = signing.sha_out(with_client, PASSPHRASE)
        self.assertTrue(signing.sha_out_verify(dict(with_client, SHASIGN=signed_in), PASSPHRASE))
        self.assertTrue(signing.sha_out_verify(dict(with_client, SHASIGN=BRIDGE_SHASIGN_512), PASSPHRASE))
        self.assertFalse(signing.sha_out_verify(dict(with_client, SHASIGN=BRIDGE_SHASIGN_256), PASSPHRASE))

    def test_live_bridge_agrees(self):
        """The bridge's code, run from its source, signs random-ish messages exactly as the addon does."""
        source = bridge_source()
        if not os.path.exists(os.path.join(source, "bridge", "api", "signing.py")):
            self.skipTest(f"no bridge source at {source}")
        messages = [MESSAGE, {"z": "\u2603 \"quoted\" \\ /", "a": [[], {}], "n": -5, "e": "\u0000\t"}]
        script = (
            "import json,sys\n"
            "from bridge.api import signing\n"
            "from bridge.uplink import feedback\n"
            "data=json.load(sys.stdin)\n"
            "out=[signing.sign(m, data['secret'], a) for m in data['messages'] for a in ('sha256','sha512')]\n"
            "out.append(feedback.sha_sign(data['feedback'], data['passphrase'], 'sha512', feedback.FEEDBACK_KEYS))\n"
            "print(json.dumps(out))\n"
        )
        env = dict(os.environ, PYTHONPATH=source)
        done = subprocess.run(
            ["/usr/bin/python3", "-c", script],
            input=json.dumps({"secret": SECRET, "messages": messages, "feedback": FEEDBACK, "passphrase": PASSPHRASE}),
            capture_output=True, text=True, env=env, cwd=source, timeout=60, check=True,
        )
        expected = [signing.sign(m, SECRET, a) for m in messages for a in ("sha256", "sha512")]
        expected.append(signing.sha_out(FEEDBACK, PASSPHRASE, "sha512"))
        self.assertEqual(json.loads(done.stdout), expected)
