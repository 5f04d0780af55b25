"""A throwaway certificate authority and server certificates for STARTTLS tests."""

from __future__ import annotations

import datetime
import hashlib
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from tests.harness.fake_mx import FakeMX


@dataclass(frozen=True)
class ThrowawayCA:
    ca_file: Path
    _key: ec.EllipticCurvePrivateKey
    _cert: x509.Certificate
    _dir: Path

    @classmethod
    def create(cls, directory: Path) -> ThrowawayCA:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Postline Test CA")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        ca_file = directory / "ca.pem"
        ca_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(ca_file, key, cert, directory)

    @property
    def certificate(self) -> x509.Certificate:
        return self._cert

    def server_certificate(self, hostname: str) -> x509.Certificate:
        """The certificate the last ``server_context(hostname)`` presents."""
        pem = (self._dir / f"{hostname}.pem").read_bytes()
        return x509.load_pem_x509_certificate(pem)

    def spki_sha256(self, hostname: str) -> bytes:
        """The DANE-EE ``3 1 1`` data of the last certificate made for ``hostname``."""
        key = self.server_certificate(hostname).public_key()
        return hashlib.sha256(
            key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        ).digest()

    async def start_mx(self, host: str, port: int, hostname: str) -> FakeMX:
        """A started STARTTLS MX on ``host`` presenting this CA's certificate for
        ``hostname`` with the CA in its chain (DANE tests)."""
        mx = FakeMX(host, port, hostname=hostname)
        mx.tls_context = self.server_context(hostname, with_ca=True)
        await mx.start()
        return mx

    def server_context(self, hostname: str, *, with_ca: bool = False) -> ssl.SSLContext:
        """A server-side context presenting a certificate for ``hostname`` signed by this CA;
        ``with_ca``: the CA's certificate is sent too (as DANE-TA needs)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        cert_file = self._dir / f"{hostname}.pem"
        key_file = self._dir / f"{hostname}.key"
        chain = cert.public_bytes(serialization.Encoding.PEM)
        if with_ca:
            chain += self._cert.public_bytes(serialization.Encoding.PEM)
        cert_file.write_bytes(chain)
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert_file, key_file)
        return context
