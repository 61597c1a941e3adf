"""Helpers for the addon's tests: a paired bridge and the bridge side of the wire (signed requests, feedback)."""

import json
import time
import uuid
from urllib.parse import urlencode

from ..tools import signing

CONTROLLER_LOGGER = "odoo.addons.terminal_bridge.controllers.main"


def paired_bridge(env, name="Shop Lyon"):
    """A terminal.bridge paired as the pairing route would; returns (bridge, the pairing answer)."""
    bridge = env["terminal.bridge"].create({"name": name})
    answer = bridge._pairing_answer({"name": "shop-box", "version": "test"})
    return bridge, answer


class BridgeSide:
    """What the box sends, built from the pairing answer (secrets as the box holds them)."""

    def __init__(self, answer, database):
        self.client = answer["client"]
        self.uplink = answer["uplink"]
        self.database = database

    def request(self, **extra):
        message = {
            "client": self.client["id"],
            "database": self.database,
            "ts": int(time.time()),
            "nonce": uuid.uuid4().hex,
        }
        message.update(extra)
        return message

    def signed(self, message, secret=None):
        return signing.signed(message, secret or self.client["secret_out"], self.client["algorithm"])

    def reply(self, command_id, result=None, error=None):
        reply = {"re": command_id, "ok": error is None}
        if error is None:
            reply["result"] = result or {}
        else:
            reply["error"] = error
        return self.signed(reply)

    def ack(self, command_id, result=None, error=None):
        return self.signed(self.request(command_id=command_id, reply=self.reply(command_id, result, error)))

    def feedback(self, order_id, pay_ref, seq, state="approved", client=True, passphrase=None, **extra):
        status = {"approved": "9", "declined": "2", "cancelled": "1", "failed": "0", "unknown": "92"}[state]
        params = {
            "ORDERID": order_id,
            "PAYID": pay_ref,
            "AMOUNT": "12.34",
            "CURRENCY": "EUR",
            "STATUS": status,
            "NCERROR": "0" if status == "9" else "1",
            "PM": "CreditCard",
            "TRXDATE": "05/01/24",
            "TBBRIDGE": "shop-box",
            "TBSEQ": str(seq),
            "TBSTATE": state,
            "TBTERMINAL": "till-1",
            "TBKIND": "debit",
        }
        if client:
            params["TBCLIENT"] = self.client["id"]
        params.update(extra)
        params["SHASIGN"] = signing.sha_out(
            params, passphrase or self.uplink["feedback_secret"], self.uplink["feedback_hash"]
        )
        return params


def as_json(message):
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def as_form(params):
    return urlencode(params).encode("utf-8")
