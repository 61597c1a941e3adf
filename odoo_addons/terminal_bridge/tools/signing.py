"""Signatures the bridge and Odoo share, written here again so that the addon needs nothing of the bridge.

- :func:`canonical` / :func:`sign` / :func:`verify`: HMAC over canonical JSON, as docs/protocol.md "Signatures"
  defines it (keys sorted at every level, no white space, non-ASCII kept as UTF-8, the ``sig`` member left out).
- :func:`sha_out`: Ogone's SHA-OUT of a feedback post, with the bridge's ``TB...`` names added to Ogone's list
  (docs/cloud-protocol.md "SHASIGN").

The tests pin both against vectors computed by the bridge's own ``bridge/api/signing.py`` and
``bridge/uplink/feedback.py``.
"""

import hashlib
import hmac
import json

ALGORITHMS = {"sha256": hashlib.sha256, "sha512": hashlib.sha512}
FEEDBACK_HASHES = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha512": hashlib.sha512}

#: Ogone's SHA-OUT allow-list (63 names, as Odoo 15.0+ payment_ogone carries it).
SHA_OUT_KEYS = frozenset(
    """
AAVADDRESS AAVCHECK AAVMAIL AAVNAME AAVPHONE AAVZIP ACCEPTANCE ALIAS AMOUNT BIC BIN BRAND CARDNO CCCTY CN
COLLECTOR_BIC COLLECTOR_IBAN COMPLUS CREATION_STATUS CREDITDEBIT CURRENCY CVCCHECK DCC_COMMPERCENTAGE
DCC_CONVAMOUNT DCC_CONVCCY DCC_EXCHRATE DCC_EXCHRATESOURCE DCC_EXCHRATETS DCC_INDICATOR DCC_MARGINPERCENTAGE
DCC_VALIDHOURS DEVICEID DIGESTCARDNO ECI ED EMAIL ENCCARDNO FXAMOUNT FXCURRENCY IP IPCTY MANDATEID MOBILEMODE
NBREMAILUSAGE NBRIPUSAGE NBRIPUSAGE_ALLTX NBRUSAGE NCERROR ORDERID PAYID PAYIDSUB PAYMENT_REFERENCE PM
SCO_CATEGORY SCORING SEQUENCETYPE SIGNDATE STATUS SUBBRAND SUBSCRIPTION_ID TICKET TRXDATE VC
""".split()
)
#: The bridge's own feedback names, signed too.
BRIDGE_KEYS = frozenset(
    "TBBRIDGE TBSEQ TBSTATE TBREASON TBMESSAGE TBTERMINAL TBKIND TBREFUNDOF TBCLIENT".split()
)
FEEDBACK_KEYS = SHA_OUT_KEYS | BRIDGE_KEYS


def canonical(message):
    """The bytes a signature covers: the message minus ``sig``, as canonical JSON (UTF-8)."""
    unsigned = {k: v for k, v in message.items() if k != "sig"}
    return json.dumps(
        unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def sign(message, secret, algorithm="sha256"):
    """Lower-case hex HMAC of :func:`canonical` with ``secret``'s UTF-8 bytes as the key."""
    return hmac.new(secret.encode("utf-8"), canonical(message), ALGORITHMS[algorithm]).hexdigest()


def signed(message, secret, algorithm="sha256"):
    """A copy of ``message`` with its ``sig``."""
    result = dict(message)
    result["sig"] = sign(result, secret, algorithm)
    return result


def verify(message, secret, algorithm="sha256"):
    """True if ``message["sig"]`` is its signature with ``secret`` (compared in constant time)."""
    received = message.get("sig") if isinstance(message, dict) else None
    if not isinstance(received, str) or not secret or algorithm not in ALGORITHMS:
        return False
    try:
        expected = sign(message, secret, algorithm)
    except (TypeError, ValueError):
        return False
    return hmac.compare_digest(received.lower().encode("ascii", "replace"), expected.encode("ascii"))


def sha_out(params, passphrase, hash_name="sha512", allowed=FEEDBACK_KEYS):
    """SHASIGN of feedback ``params`` (a dict of strings), SHASIGN itself left out; upper-case hex."""
    pairs = sorted((str(k).upper(), v) for k, v in params.items() if str(k).upper() != "SHASIGN")
    text = "".join(f"{k}={v}{passphrase}" for k, v in pairs if k in allowed and v not in (None, False, ""))
    return FEEDBACK_HASHES[hash_name](text.encode("utf-8")).hexdigest().upper()


def sha_out_verify(params, passphrase, hash_name="sha512"):
    """True if the ``SHASIGN`` of ``params`` is right for ``passphrase`` (constant-time compare).

    ``TBCLIENT`` (the client id that names the bridge) is signed by bridges that send it; a bridge whose list
    does not sign it is accepted too, since the passphrase it chose already belongs to that bridge alone.
    """
    received = next((v for k, v in params.items() if str(k).upper() == "SHASIGN"), None)
    if not isinstance(received, str) or not passphrase or hash_name not in FEEDBACK_HASHES:
        return False
    received = received.upper().encode("ascii", "replace")
    ok = False
    for allowed in (FEEDBACK_KEYS, FEEDBACK_KEYS - {"TBCLIENT"}):
        expected = sha_out(params, passphrase, hash_name, allowed).encode("ascii")
        ok = hmac.compare_digest(received, expected) or ok
    return ok
