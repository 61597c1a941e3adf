"""The listener's TLS and its plain-HTTP face (issue 13 item 9, issue 14 items 9 and 11), over real sockets.

The peer is Python's own ssl module (a different TLS stack from the bridge's pyOpenSSL), run on a thread."""

import os
import socket
import ssl
import warnings

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from bridge.api.client import connect
from bridge.api.tls import ensure_certificate, server_options
from bridge.errors import BridgeError
from tests.support import add_test_client, credentials_of, start_daemon, write_config


def _client_context(ciphers=None, tls12_only=False):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if tls12_only:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    if ciphers:
        context.set_ciphers(ciphers)
    return context


def _exchange(port, context, request=None):
    """Connect, handshake, optionally send ``request`` and read the answer to its end.  Returns
    (negotiated cipher name, answer bytes) or raises ssl.SSLError."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw) as tls:
            answer = b""
            if request is not None:
                tls.sendall(request)
                while True:
                    chunk = tls.recv(4096)
                    if not chunk:
                        break
                    answer += chunk
            return tls.cipher()[0], answer


class ListenerTLSTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def setUp(self):
        directory = self.mktemp()
        os.makedirs(directory)
        path = write_config(directory, {"till-1": "127.0.0.1:9"})
        self.creds = credentials_of(add_test_client(path, "pos"))
        self.daemon, self.url, self.fingerprint = yield start_daemon(self, path, reactor)
        self.port = int(self.url.rsplit(":", 1)[1])

    @inlineCallbacks
    def test_tls12_offers_only_ecdhe_with_aead_ciphers(self):
        for weak in ("ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384", "ECDHE-ECDSA-AES128-SHA256"):
            with self.assertRaises(ssl.SSLError, msg=weak):
                yield deferToThread(_exchange, self.port, _client_context(weak, tls12_only=True))
        cipher, _ = yield deferToThread(_exchange, self.port, _client_context("ECDHE-ECDSA-AES128-GCM-SHA256",
                                                                             tls12_only=True))
        self.assertEqual(cipher, "ECDHE-ECDSA-AES128-GCM-SHA256")
        cipher, _ = yield deferToThread(_exchange, self.port, _client_context("ECDHE-ECDSA-CHACHA20-POLY1305",
                                                                             tls12_only=True))
        self.assertEqual(cipher, "ECDHE-ECDSA-CHACHA20-POLY1305")

    @inlineCallbacks
    def test_a_plain_get_gets_404_without_a_product_banner(self):
        for request in (b"GET / HTTP/1.1\r\nHost: bridge\r\n\r\n",
                        b"GET /?redirect=https%3A%2F%2Fexample.com&after=x HTTP/1.1\r\nHost: bridge\r\n\r\n"):
            _, answer = yield deferToThread(_exchange, self.port, _client_context(), request)
            head = answer.split(b"\r\n\r\n")[0]
            self.assertTrue(head.startswith(b"HTTP/1.1 404 "), answer)
            self.assertNotIn(b"server:", head.lower())
            self.assertNotIn(b"autobahn", answer.lower())

    @inlineCallbacks
    def test_the_websocket_handshake_carries_no_product_banner(self):
        request = (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                   b"Sec-WebSocket-Protocol: terminal-bridge.v1\r\n\r\n")

        def handshake():
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as raw:
                with _client_context().wrap_socket(raw) as tls:
                    tls.sendall(request)
                    answer = b""
                    while b"\r\n\r\n" not in answer:
                        answer += tls.recv(4096)
                    return answer

        answer = yield deferToThread(handshake)
        self.assertTrue(answer.startswith(b"HTTP/1.1 101"), answer)
        self.assertNotIn(b"server:", answer.lower())

    @inlineCallbacks
    def test_a_client_pinning_another_fingerprint_is_logged_with_its_address(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        _, opened = connect(reactor, self.url, self.creds, fingerprint="AB" * 32)
        with self.assertRaises(BridgeError):
            yield opened
        while not any(e.get("peer") == "127.0.0.1" and e.get("kind") == "tls" for e in events):
            yield deferToThread(lambda: None)  # the bridge's side of the failure comes a turn later
        server_side = [e for e in events if "Server" in e.get("log_namespace", "")]
        self.assertFalse([e for e in server_side if "(in )" in str(e.get("log_format", ""))])


class ServerOptionsTests(TestCase):
    def test_options_are_built_without_deprecated_pyopenssl_objects(self):
        directory = self.mktemp()
        os.makedirs(directory)
        cert, key = os.path.join(directory, "c.pem"), os.path.join(directory, "k.pem")
        ensure_certificate(cert, key, "test")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            server_options(cert, key).getContext()
        self.assertEqual([str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)], [])

    def test_a_key_that_is_not_the_certificates_is_refused_in_words(self):
        directory = self.mktemp()
        os.makedirs(directory)
        ensure_certificate(os.path.join(directory, "c.pem"), os.path.join(directory, "k.pem"), "one")
        ensure_certificate(os.path.join(directory, "c2.pem"), os.path.join(directory, "k2.pem"), "two")
        with self.assertRaises(BridgeError) as caught:
            server_options(os.path.join(directory, "c.pem"), os.path.join(directory, "k2.pem"))
        self.assertEqual(caught.exception.code, "bad_certificate")
