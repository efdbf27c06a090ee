"""The agent's own TLS identity: a P-256 key and a self-signed certificate, made on its first start.

No certificate authority vouches for a board on a LAN, so the client trusts the certificate it was told about:
the agent prints its SHA-256 fingerprint, the device entry pins it, and the client refuses any other (as SSH's
known hosts do). The pair is kept in ``<folder>/tls/`` and reused, so the pinned fingerprint stays valid across
restarts; deleting that folder makes a new identity (and the device entry must pin the new fingerprint).
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgecraft.bench.agent.protocol import fingerprint
from edgecraft.bench.agent.tokens import check_private, write_private

TLS_FOLDER = "tls"
KEY_FILE = "key.pem"
CERTIFICATE_FILE = "certificate.pem"
# Pinned, never checked against a date: a long validity spares a board's owner a re-pinning every year.
_VALIDITY = datetime.timedelta(days=3650)


@dataclass(frozen=True)
class Identity:
    key: Path
    certificate: Path
    fingerprint: str


def identity(folder: Path) -> Identity:
    """The agent's key and certificate in ``folder/tls``, made there if they are not both there yet."""
    tls = folder / TLS_FOLDER
    key, certificate = tls / KEY_FILE, tls / CERTIFICATE_FILE
    if not (key.is_file() and certificate.is_file()):
        tls.mkdir(parents=True, exist_ok=True)
        _make(key, certificate)
    try:
        check_private(key)
    except ValueError as exc:
        raise ValueError(f"the agent's private key {exc}") from None
    return Identity(key, certificate, read_fingerprint(folder))


def read_fingerprint(folder: Path) -> str:
    """The fingerprint of the certificate in ``folder/tls``; ``ValueError`` if the agent has made none there."""
    certificate = folder / TLS_FOLDER / CERTIFICATE_FILE
    try:
        pem = certificate.read_text()
    except FileNotFoundError:
        raise ValueError(
            f"no certificate in {certificate.parent}: the agent makes one the first time it starts with TLS"
        ) from None
    return fingerprint(ssl.PEM_cert_to_DER_cert(pem))


def _make(key_file: Path, certificate_file: Path) -> None:
    """A new key (written first, mode 0600) and its certificate, naming this host and loopback."""
    key = ec.generate_private_key(ec.SECP256R1())
    host = socket.gethostname()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"edgecraft agent on {host}")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))  # a board whose clock is a little behind
        .not_valid_after(now + _VALIDITY)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName(host),
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    write_private(
        key_file,
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    write_private(certificate_file, certificate.public_bytes(serialization.Encoding.PEM))
