"""TLS for the command channel: a self-signed certificate made at first start, and fingerprint pinning."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import socket
from typing import Optional

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from zope.interface import implementer

from bridge.errors import BridgeError


def fingerprint_of_pem(pem: bytes) -> str:
    """SHA-256 fingerprint of a PEM certificate, as colon-separated upper-case hex pairs."""
    cert = x509.load_pem_x509_certificate(pem)
    return format_fingerprint(cert.fingerprint(hashes.SHA256()))


def format_fingerprint(digest: bytes) -> str:
    return ":".join(f"{b:02X}" for b in digest)


def normalise_fingerprint(text: str) -> str:
    """Accept ``AA:BB:..``, ``aabb..`` or ``SHA256:AA:BB..`` and return the canonical form."""
    cleaned = text.strip().upper()
    if cleaned.startswith("SHA256:") or cleaned.startswith("SHA-256:"):
        cleaned = cleaned.split(":", 1)[1]
    hexdigits = cleaned.replace(":", "").replace(" ", "")
    if len(hexdigits) != 64 or any(c not in "0123456789ABCDEF" for c in hexdigits):
        raise BridgeError("bad_fingerprint", "A certificate fingerprint is 64 hex digits (SHA-256).")
    return ":".join(hexdigits[i:i + 2] for i in range(0, 64, 2))


def ensure_certificate(cert_path: str, key_path: str, hostname: Optional[str] = None) -> bool:
    """Create a key and a self-signed certificate at the given paths unless both exist.  True if created."""
    if os.path.exists(cert_path) and os.path.exists(key_path):
        return False
    hostname = hostname or socket.gethostname()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"terminal-bridge {hostname}"[:64])])
    now = datetime.datetime.now(datetime.timezone.utc)
    alt_names: list[x509.GeneralName] = [x509.DNSName(hostname), x509.DNSName("localhost"),
                                         x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    for path in (cert_path, key_path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o750, exist_ok=True)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    _write_private(key_path, key_pem)
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return True


def _write_private(path: str, data: bytes) -> None:
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)


#: TLS 1.2 suites offered: ECDHE key exchange with an AEAD cipher only (no CBC, no SHA-1 MAC, no static RSA).
#: TLS 1.3's own suites are all of that kind.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def server_options(cert_path: str, key_path: str) -> ssl.CertificateOptions:
    """Server TLS options: TLS 1.2 at least (Twisted 22.4 still allowed 1.0 by default), ECDHE with AEAD ciphers.

    The certificate (with any chain after it in the same file) and the key are loaded into the context from
    their files, by OpenSSL itself: no pyOpenSSL X509/PKey objects, which pyOpenSSL deprecates, and no
    cryptography objects, which the pyOpenSSL of Debian bookworm does not take.
    """
    options = ssl.CertificateOptions(raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
                                     acceptableCiphers=ssl.AcceptableCiphers.fromOpenSSLCipherString(TLS12_CIPHERS))
    # Twisted builds the context once and uses it for every connection (both Twisted 22.4 and current ones)
    context = options.getContext()
    try:
        context.use_certificate_chain_file(cert_path.encode())
        context.use_privatekey_file(key_path.encode())
        context.check_privatekey()
    except SSL.Error as e:
        raise BridgeError("bad_certificate", f"The TLS certificate {cert_path} or its key {key_path} cannot be "
                                             "used (unreadable, or they do not belong together).") from e
    return options


@implementer(IOpenSSLClientConnectionCreator)
class PinnedCertificateCreator:
    """Client TLS that accepts exactly one server certificate, named by its SHA-256 fingerprint.

    Twisted has no pinning API; this is the documented seam (an ``IOpenSSLClientConnectionCreator``).
    """

    def __init__(self, fingerprint: str, hostname: str) -> None:
        self.fingerprint = normalise_fingerprint(fingerprint)
        self.hostname = hostname
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        context.set_verify(SSL.VERIFY_PEER, self._verify)
        self._context = context

    def _verify(self, connection, x509_cert, errno, depth, preverify_ok) -> bool:
        if depth != 0:
            return True  # only the server's own certificate is pinned; its chain does not matter
        digest = x509_cert.to_cryptography().fingerprint(hashes.SHA256())
        return format_fingerprint(digest) == self.fingerprint

    def clientConnectionForTLS(self, tlsProtocol):
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        try:
            connection.set_tlsext_host_name(self.hostname.encode("idna"))
        except (UnicodeError, ValueError):
            pass
        return connection


def fingerprint_of_digest_bytes(der: bytes) -> str:
    return format_fingerprint(hashlib.sha256(der).digest())
