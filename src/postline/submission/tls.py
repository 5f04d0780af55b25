"""The certificate an SMTP listener presents: the operator's, or a self-signed one.

A submission port without TLS would carry API keys in clear text, so a fresh
installation gets a self-signed pair instead of none: clients that do not
verify (most application mailers on a private network, or told not to) work at
once, and the operator is told at start to install a real certificate. The
pair lives in the data dir as one PEM file (key and certificate together),
written once and atomically (``private_files.write_once``), so processes that
start together on one data dir present the same certificate; it is made again
only when it has expired.

The inbound listener may use it too: nothing here knows about submission.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from postline.config import ConfigError
from postline.private_files import write_once

#: The self-signed pair's file in the data dir.
SELF_SIGNED_FILE = "smtp-tls.pem"
#: How long a generated certificate is valid: long enough not to be a chore, short
#: enough that a forgotten one does not outlive its key's strength.
VALIDITY = datetime.timedelta(days=825)


@dataclass(frozen=True)
class TlsMaterial:
    """A server context and where its certificate came from (for the start-up line)."""

    context: ssl.SSLContext
    cert_file: Path
    self_signed: bool


def self_signed_pem(hostname: str, now: datetime.datetime | None = None) -> str:
    """A new P-256 key and a certificate for ``hostname`` (and loopback) signed by it."""
    now = now or datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    names: list[x509.GeneralName] = [
        x509.DNSName(hostname),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return (key_pem + cert.public_bytes(serialization.Encoding.PEM)).decode()


def _expired(pem_file: Path, now: datetime.datetime) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(pem_file.read_bytes())
    except ValueError:
        return True  # unreadable: make a new one rather than refuse to start
    return cert.not_valid_after_utc <= now


def ensure_self_signed(data_dir: Path, hostname: str) -> Path:
    """The data dir's self-signed pair, created (or renewed when expired) if need be."""
    path = data_dir / SELF_SIGNED_FILE
    now = datetime.datetime.now(datetime.UTC)
    if path.is_file() and _expired(path, now):
        path.unlink(missing_ok=True)
    if not path.is_file():
        write_once(path, self_signed_pem(hostname, now))
    return path


def server_tls(data_dir: Path, hostname: str, cert_file: str, key_file: str) -> TlsMaterial:
    """The server context from the configured files, or from a self-signed pair.

    A bad file is a ConfigError naming the setting, said once at start rather than
    as a failed handshake with every client.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file:
        try:
            context.load_cert_chain(cert_file, key_file)
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise ConfigError(
                f"POSTLINE_SUBMISSION_TLS_CERT/KEY {cert_file}, {key_file}: cannot load ({reason})"
            ) from None
        return TlsMaterial(context, Path(cert_file), self_signed=False)
    path = ensure_self_signed(data_dir, hostname)
    context.load_cert_chain(path)
    return TlsMaterial(context, path, self_signed=True)
