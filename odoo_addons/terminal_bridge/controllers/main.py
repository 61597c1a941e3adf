"""The routes a bridge's uplink calls (docs/cloud-protocol.md): /pair, /pending, /ack, /feedback.

Every refusal is logged with its reason. The ones an administrator can act on (a wrong signature or SHASIGN: the
box holds old secrets; the box's clock) are also kept as the bridge's last problem, shown on its record until its
next good request. The bridge itself learns the HTTP status and a short reason.
"""

import json
import logging
import re
import time

from odoo import http
from odoo.http import request

from ..tools import signing

_logger = logging.getLogger(__name__)

CLOCK_SKEW = 120
MAX_PAIR_BODY = 8 * 1024
MAX_PENDING_BODY = 8 * 1024
MAX_ACK_BODY = 1024 * 1024
MAX_FEEDBACK_BODY = 16 * 1024
_NONCE = re.compile(r"[A-Za-z0-9_-]{16,64}\Z")
_SEQ = re.compile(r"[0-9]{1,15}\Z")


class Refused(Exception):
    def __init__(self, status, reason, code="refused", bridge=None):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.code = code
        self.bridge = bridge


def _answer(data, status=200):
    return request.make_json_response(data, status=status)


def _refusal(route, refused):
    _logger.warning(
        "terminal bridge %s refused (HTTP %s) from %s: %s",
        route,
        refused.status,
        request.httprequest.remote_addr,
        refused.reason,
    )
    return _answer({"error": {"code": refused.code, "message": refused.reason}}, status=refused.status)


def _body(limit):
    length = request.httprequest.content_length
    if length is None or length > limit:
        raise Refused(413, f"the body is missing its length or larger than {limit} bytes", "too_large")
    # Cached: when two requests of a bridge collide on a row, Odoo retries the request from the start, and an
    # uncached body would then read as empty ("not JSON").
    return request.httprequest.get_data()


def _json_body(limit):
    try:
        data = json.loads(_body(limit).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise Refused(400, "the body is not JSON", "bad_request") from None
    if not isinstance(data, dict):
        raise Refused(400, "the body is not a JSON object", "bad_request")
    return data


def _bridge_of_client(client_id):
    if not isinstance(client_id, str) or not 0 < len(client_id) <= 64:
        return None
    bridge = request.env["terminal.bridge"].sudo().search(
        [("client_ref", "=", client_id), ("state", "=", "paired")], limit=1
    )
    return bridge or None


def _authenticate(data):
    """The bridge that signed ``data`` ({client, database, ts, nonce, ..., sig}), or Refused (403)."""
    bridge = _bridge_of_client(data.get("client"))
    if bridge is None:
        raise Refused(403, f"no paired bridge has the client id {str(data.get('client'))[:64]!r}")
    if data.get("database") != request.env.cr.dbname:
        raise Refused(403, f"the request names the database {str(data.get('database'))[:64]!r}", bridge=bridge)
    if not signing.verify(data, bridge.secret_out, bridge.algorithm or "sha256"):
        bridge._problem("a request with a wrong signature was refused (the box's outbound secret differs: pair again)")
        raise Refused(403, f"wrong signature for bridge {bridge.name!r}", bridge=bridge)
    ts = data.get("ts")
    if isinstance(ts, bool) or not isinstance(ts, int):
        raise Refused(403, "the request has no integer ts", bridge=bridge)
    off = int(time.time()) - ts
    if abs(off) > CLOCK_SKEW:
        words = f"the box's clock is {abs(off)} s {'behind' if off > 0 else 'ahead of'} Odoo's (at most {CLOCK_SKEW} s)"
        bridge._problem(words + ": set the box's time (NTP)")
        raise Refused(403, f"bridge {bridge.name!r}: {words}", bridge=bridge)
    nonce = data.get("nonce")
    if not isinstance(nonce, str) or not _NONCE.match(nonce):
        raise Refused(403, f"bridge {bridge.name!r}: the nonce is missing or malformed", bridge=bridge)
    if not request.env["terminal.bridge.nonce"].sudo()._use(bridge, nonce):
        raise Refused(403, f"bridge {bridge.name!r}: the nonce was already used (a replayed request)", bridge=bridge)
    return bridge


def _bridge_route(path):
    """A route the box calls: plain HTTP POSTs of its own (no CSRF token, no browser session kept), on a
    writable cursor (routes with auth='none' get a read-only one by default on 18.0 and 19.0)."""
    return http.route(
        path, type="http", auth="none", methods=["POST"], csrf=False, readonly=False, save_session=False
    )


class TerminalBridgeController(http.Controller):
    @_bridge_route("/terminal_bridge/pair")
    def pair(self, **_kwargs):
        try:
            data = _json_body(MAX_PAIR_BODY)
            code = data.get("code")
            if not isinstance(code, str) or not code.strip() or len(code) > 64:
                raise Refused(400, "the request has no pairing code", "bad_request")
            database = data.get("database")
            if database is not None and database != request.env.cr.dbname:
                raise Refused(404, f"this is not the database {str(database)[:64]!r}", "not_found")
            box = data.get("bridge") if isinstance(data.get("bridge"), dict) else {}
            status, error, answer = (
                request.env["terminal.bridge.pairing"].sudo()._pair(code, box, request.httprequest.remote_addr)
            )
            if error:
                raise Refused(status, answer, error)
        except Refused as refused:
            return _refusal("/pair", refused)
        _logger.info("terminal bridge %r paired (box %r)", answer["bridge"], str(box.get("name"))[:64])
        return _answer(answer)

    @_bridge_route("/terminal_bridge/pending")
    def pending(self, **_kwargs):
        try:
            bridge = _authenticate(_json_body(MAX_PENDING_BODY))
        except Refused as refused:
            return _refusal("/pending", refused)
        bridge._seen()
        commands = request.env["terminal.bridge.command"].sudo()._serve(bridge)
        return _answer({"commands": commands})

    @_bridge_route("/terminal_bridge/ack")
    def ack(self, **_kwargs):
        try:
            data = _json_body(MAX_ACK_BODY)
            bridge = _authenticate(data)
            command_id, reply = data.get("command_id"), data.get("reply")
            if not isinstance(command_id, str) or not 0 < len(command_id) <= 128 or not isinstance(reply, dict):
                raise Refused(400, "the acknowledgement has no command_id or no reply", "bad_request", bridge)
            if reply.get("re") != command_id:
                raise Refused(400, "the reply answers another command", "bad_request", bridge)
            if not signing.verify(reply, bridge.secret_out, bridge.algorithm or "sha256"):
                raise Refused(403, f"bridge {bridge.name!r}: wrong signature on the reply to {command_id}", bridge=bridge)
        except Refused as refused:
            return _refusal("/ack", refused)
        bridge._seen()
        command = request.env["terminal.bridge.command"].sudo().search(
            [("uuid", "=", command_id), ("bridge_id", "=", bridge.id)], limit=1
        )
        if not command:
            _logger.warning("terminal bridge %r acknowledged a command Odoo does not know: %s", bridge.name, command_id)
            return _answer({"ok": True, "known": False})
        if command.state != "done":
            if not reply.get("ok"):
                error = reply.get("error") if isinstance(reply.get("error"), dict) else {}
                _logger.warning(
                    "terminal bridge %r refused %s %s: %s %s",
                    bridge.name,
                    command.op,
                    command.uuid,
                    str(error.get("code") or "")[:64],
                    str(error.get("message") or "")[:500],
                )
            command._apply_reply(reply)
        return _answer({"ok": True})

    @_bridge_route("/terminal_bridge/feedback")
    def feedback(self, **_kwargs):
        try:
            params = _form(MAX_FEEDBACK_BODY)
            bridge = _feedback_bridge(params)
            pay_ref = params.get("PAYID", "")
            if not 0 < len(pay_ref) <= 64:
                raise Refused(400, "the feedback has no PAYID", "bad_request", bridge)
            seq = params.get("TBSEQ", "0")
            if not _SEQ.match(seq):
                raise Refused(400, f"TBSEQ {seq[:20]!r} is not a number", "bad_request", bridge)
        except Refused as refused:
            return _refusal("/feedback", refused)
        bridge._seen()
        _store_feedback(bridge, params, pay_ref, int(seq))
        return _answer({"ok": True})


def _form(limit):
    content_type = (request.httprequest.mimetype or "").lower()
    if content_type != "application/x-www-form-urlencoded":
        raise Refused(415, f"the feedback is {content_type or 'untyped'}, not form-encoded", "bad_request")
    length = request.httprequest.content_length
    if length is None or length > limit:
        raise Refused(413, f"the body is missing its length or larger than {limit} bytes", "too_large")
    params = {}
    for key, value in request.httprequest.form.items():
        params[str(key).upper()] = value
    return params


def _feedback_bridge(params):
    """The bridge whose passphrase signed ``params``: named by TBCLIENT, else by ORDERID's payment."""
    if not params.get("SHASIGN"):
        raise Refused(403, "the feedback is not signed (no SHASIGN)")
    Bridge = request.env["terminal.bridge"].sudo()
    if params.get("TBCLIENT"):
        candidates = _bridge_of_client(params["TBCLIENT"]) or Bridge
        how = f"TBCLIENT {params['TBCLIENT'][:64]!r}"
    else:
        payment = request.env["terminal.bridge.payment"].sudo().search(
            [("command_id", "=", params.get("ORDERID", "")[:128])], limit=1
        )
        candidates = payment.bridge_id.filtered(lambda b: b.state == "paired")
        how = f"ORDERID {params.get('ORDERID', '')[:128]!r}"
        if not candidates:
            # An older bridge that names no client, and an ORDERID Odoo does not know (a LAN payment):
            # the bridge is the one whose passphrase signed it.
            candidates = Bridge.search([("state", "=", "paired")], limit=200)
            how = "no TBCLIENT and an unknown ORDERID"
    if not candidates:
        raise Refused(403, f"no paired bridge matches the feedback ({how})")
    for bridge in candidates:
        if signing.sha_out_verify(params, bridge.feedback_secret, bridge.feedback_hash or "sha512"):
            return bridge
    if len(candidates) == 1:
        candidates._problem("a result with a wrong SHASIGN was refused (the box's feedback passphrase differs: pair again)")
    raise Refused(403, f"wrong SHASIGN ({how})")


def _store_feedback(bridge, params, pay_ref, seq):
    Feedback = request.env["terminal.bridge.feedback"].sudo()
    if Feedback.search_count([("pay_ref", "=", pay_ref), ("seq", "=", seq)]):
        _logger.info("terminal bridge %r: feedback %s #%s received again (already stored)", bridge.name, pay_ref, seq)
        return
    order_ref = params.get("ORDERID", "")[:128]
    payment = request.env["terminal.bridge.payment"].sudo().search(
        [("command_id", "=", order_ref), ("bridge_id", "=", bridge.id)], limit=1
    )
    stored = {k: v for k, v in params.items() if k != "SHASIGN"}
    applied = False
    if payment:
        before = payment._watched()
        applied = payment._apply_feedback(params, seq)
        payment._changed_since(before)
    else:
        _logger.info(
            "terminal bridge %r: feedback for ORDERID %r that Odoo did not start (stored only)", bridge.name, order_ref
        )
    Feedback.create(
        {
            "bridge_id": bridge.id,
            "pay_ref": pay_ref,
            "seq": seq,
            "order_ref": order_ref,
            "status": params.get("STATUS", "")[:8],
            "params": json.dumps(stored, ensure_ascii=False, sort_keys=True),
            "payment_id": payment.id or False,
            "applied": applied,
        }
    )
