import hashlib
import hmac

from hypothesis import given, strategies as st

from bridge.api import signing

SECRET = "s" * 64


def test_canonical_form_sorts_keys_drops_sig_and_keeps_utf8():
    message = {"op": "payment.start", "id": "c1", "args": {"b": 1, "a": "é"}, "sig": "xx", "ts": 5}
    assert signing.canonical(message) == '{"args":{"a":"é","b":1},"id":"c1","op":"payment.start","ts":5}'.encode()


def test_documented_vector():
    # The worked example of docs/protocol.md; a client author checks their code against it.
    message = {"id": "cmd-1", "op": "hello", "ts": 1700000000, "args": {"client": "cl_pos"}}
    secret = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    expected = hmac.new(secret.encode(), b'{"args":{"client":"cl_pos"},"id":"cmd-1","op":"hello","ts":1700000000}',
                        hashlib.sha256).hexdigest()
    assert signing.sign(message, secret) == expected
    assert expected == "c0485357267967d1c0d638dbdaa52ea90ff8bba146db2c5b33c981afd0f58da2"


def test_sha512_signatures_verify_only_with_sha512():
    message = signing.signed({"id": "x", "op": "hello"}, SECRET, "sha512")
    assert len(message["sig"]) == 128
    assert signing.verify(message, SECRET, "sha512")
    assert not signing.verify(message, SECRET, "sha256")


def test_missing_or_non_string_signature_fails():
    assert not signing.verify({"id": "x"}, SECRET)
    assert not signing.verify({"id": "x", "sig": 5}, SECRET)


def test_upper_case_hex_is_accepted():
    message = signing.signed({"id": "x"}, SECRET)
    message["sig"] = message["sig"].upper()
    assert signing.verify(message, SECRET)


def test_new_secrets_are_random_and_long_enough():
    a, b = signing.new_secret(), signing.new_secret()
    assert a != b and len(bytes.fromhex(a)) == signing.MIN_SECRET_BYTES


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-10**15, max_value=10**15) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)
messages = st.dictionaries(st.text(min_size=1, max_size=8).filter(lambda k: k != "sig"), json_values,
                           min_size=1, max_size=6)


@given(messages)
def test_signed_messages_verify(message):
    assert signing.verify(signing.signed(message, SECRET), SECRET)


@given(messages, st.data())
def test_any_change_breaks_the_signature(message, data):
    signed = signing.signed(message, SECRET)
    key = data.draw(st.sampled_from(sorted(message)))
    tampered = dict(signed)
    tampered[key] = [message[key], "tampered"]
    assert not signing.verify(tampered, SECRET)
    assert not signing.verify(signed, SECRET[:-1] + "t")


@given(messages)
def test_signed_bytes_are_the_signed_message_serialised(message):
    import json

    wire = signing.signed_bytes(message, SECRET)
    assert json.loads(wire) == signing.signed(message, SECRET)
    assert signing.verify(json.loads(wire), SECRET)
