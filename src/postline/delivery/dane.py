"""DANE for SMTP (RFC 7672): does the MX's certificate match its TLSA records?

Only DANE-TA(2) and DANE-EE(3) are used for SMTP (RFC 7672 3.1.3). DANE-EE
binds the server's own certificate or key: names and dates do not matter.
DANE-TA binds a trust anchor the server must send in its chain; the leaf must
then chain to it and carry the MX host name.

The handshake runs without the ssl module's own checks; the chain the server
sent is read from the private ``_sslobj.get_unverified_chain`` (public from
Python 3.13 on) and checked here with ``cryptography``.
"""

from __future__ import annotations

import _ssl
import hashlib
from collections.abc import Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from postline.delivery.tls import Tlsa

#: Usages, selectors and matching types RFC 7672 lets SMTP use.
USAGES = (2, 3)
SELECTORS = (0, 1)
MATCHING_TYPES = (0, 1, 2)


def usable(record: Tlsa) -> bool:
    return (
        record.usage in USAGES and record.selector in SELECTORS and record.mtype in MATCHING_TYPES
    )


def association(cert: x509.Certificate, selector: int, mtype: int) -> bytes:
    """The certificate association data a TLSA record with this selector and type holds."""
    if selector == 0:
        data = cert.public_bytes(Encoding.DER)
    else:
        data = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if mtype == 1:
        return hashlib.sha256(data).digest()
    if mtype == 2:
        return hashlib.sha512(data).digest()
    return data


def matches(record: Tlsa, cert: x509.Certificate) -> bool:
    return association(cert, record.selector, record.mtype) == record.data


def peer_chain(ssl_object: Any) -> list[x509.Certificate]:
    """The certificates the server sent, leaf first ([] when there is no TLS)."""
    if ssl_object is None:
        return []
    raw = getattr(ssl_object, "_sslobj", None)
    getter = getattr(raw, "get_unverified_chain", None) or getattr(
        ssl_object, "get_unverified_chain", None
    )
    if getter is not None:
        chain = getter() or []
        return [x509.load_der_x509_certificate(_der(item)) for item in chain]
    leaf = ssl_object.getpeercert(binary_form=True)
    return [x509.load_der_x509_certificate(leaf)] if leaf else []


def _der(item: Any) -> bytes:
    if isinstance(item, bytes):
        return item
    # An _ssl.Certificate: _ssl.ENCODING_DER is not exported by the ssl module.
    der: bytes = item.public_bytes(_ssl.ENCODING_DER)
    return der


def check(ssl_object: Any, records: Sequence[Tlsa], mx_name: str) -> str | None:
    """None when the chain matches a usable record; else why not (for the timeline).

    No usable record left means "mandatory unauthenticated TLS" (RFC 7672 2.2):
    encryption is enough.
    """
    wanted = [r for r in records if usable(r)]
    if not wanted:
        return None
    chain = peer_chain(ssl_object)
    if not chain:
        return "no certificate was presented"
    leaf, rest = chain[0], chain[1:]
    if any(r.usage == 3 and matches(r, leaf) for r in wanted):
        return None
    for anchor in chain:
        named = any(r.usage == 2 and matches(r, anchor) for r in wanted)
        if named and _chains_to(leaf, rest, anchor, mx_name):
            return None
    return "the certificate matches none of its TLSA records"


def _chains_to(
    leaf: x509.Certificate,
    intermediates: list[x509.Certificate],
    anchor: x509.Certificate,
    mx_name: str,
) -> bool:
    """Whether ``leaf`` is valid for ``mx_name`` with ``anchor`` as the only trust anchor."""
    if leaf == anchor:
        return False  # DANE-TA names an issuer, not the server's own certificate
    # A private CA named by DANE-TA need not follow the WebPKI's extension profile
    # (authority key ids, key usages): chain, signatures, dates and the name are checked.
    ca_policy = ExtensionPolicy.permit_all().require_present(
        x509.BasicConstraints, Criticality.AGNOSTIC, None
    )
    ee_policy = ExtensionPolicy.permit_all().require_present(
        x509.SubjectAlternativeName, Criticality.AGNOSTIC, None
    )
    verifier = (
        PolicyBuilder()
        .extension_policies(ca_policy=ca_policy, ee_policy=ee_policy)
        .store(Store([anchor]))
        .build_server_verifier(x509.DNSName(mx_name))
    )
    try:
        verifier.verify(leaf, [c for c in intermediates if c != anchor])
    except (VerificationError, ValueError):
        return False
    return True
