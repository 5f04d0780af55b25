"""DKIM signing (RFC 6376, rsa-sha256, relaxed/relaxed) with OpenSSL doing the RSA.

dkimpy signs with pure-Python RSA (milliseconds per message); ``cryptography``
signs a 2048-bit key in a fraction of that, so only canonicalization lives here
and interoperability is proven by verifying with dkimpy in the tests.

The signature covers the message as it will be on the wire: aiosmtplib turns
every bare CR or LF into CRLF and terminates the data with CRLF, and RFC 6376
5.3 asks signers to do the same conversion, so canonicalization starts from
that form. The bytes handed back after the signature header are the caller's
own, unchanged.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Sequence

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

__all__ = ["SIGNED_HEADERS", "DkimKey", "dkim_dns_value", "sign"]

SIGNED_HEADERS: tuple[str, ...] = (
    "from",
    "to",
    "cc",
    "subject",
    "date",
    "message-id",
    "reply-to",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "in-reply-to",
    "references",
    "list-unsubscribe",
    "list-unsubscribe-post",
)

_MAX_LINE = 78
_LINE_ENDINGS = re.compile(rb"\r\n|\n|\r(?!\n)")  # the same rewrite aiosmtplib applies
_WSP_RUN = re.compile(rb"[ \t]+")
_BODY_WSP = re.compile(rb"[ \t]{2,}|\t")  # single spaces are already canonical
_TAG_VALUE = re.compile(r"^[A-Za-z0-9._-]+$")
_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+")  # RFC 5322 ftext


class DkimKey:
    """A parsed signing key: PEM parsing costs more than a signature, so do it once."""

    __slots__ = ("_private_key", "domain", "selector")

    def __init__(self, domain: str, selector: str, private_key_pem: str) -> None:
        for label, value in (("domain", domain), ("selector", selector)):
            # d= and s= go into the header verbatim; anything else would corrupt the tag list.
            if not _TAG_VALUE.match(value):
                raise ValueError(f"DKIM {label} {value!r} must be an ASCII (A-label) name")
        key = _load_own_key(private_key_pem)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise TypeError("DKIM signing supports RSA keys only (a=rsa-sha256)")
        self.domain = domain
        self.selector = selector
        self._private_key = key

    def _sign(self, data: bytes) -> bytes:
        return self._private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def _load_own_key(private_key_pem: str) -> PrivateKeyTypes:
    """A domain's key, without OpenSSL's check of its numbers.

    The check costs 32-54 ms a 2048-bit key with the GIL held: the API's event loop
    stood still for each domain's first lone email it builds (``accept._small``) and
    for each domain of every ``GET /v1/domains``; without it 0.01-0.05 ms. It guards
    keys from elsewhere; these are Postline's own (``domains._generate_dkim_key`` makes
    them with cryptography; there is no import), kept sealed with an authenticated
    cipher.
    """
    return serialization.load_pem_private_key(
        private_key_pem.encode(), password=None, unsafe_skip_rsa_key_validation=True
    )


def dkim_dns_value(private_key_pem: str) -> str:
    """The TXT value to publish at ``<selector>._domainkey.<domain>``.

    A 2048-bit ``p=`` is longer than one 255-byte TXT string; splitting it into
    several strings of one record is the DNS publisher's job, not this one's.

    Loaded as ``DkimKey`` loads it (``_load_own_key``): 0.03 ms, where the checks
    cost 54 ms of CPU on the event loop for each domain of every ``GET /v1/domains``.
    """
    key = _load_own_key(private_key_pem)
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode('ascii')}"


def sign(
    message: bytes,
    key: DkimKey,
    *,
    timestamp: int | None = None,
    headers: Sequence[str] = SIGNED_HEADERS,
) -> bytes:
    """Prepend a DKIM-Signature header to ``message``.

    Only header fields present are listed in h= (once per occurrence, so every
    instance is covered); "from" is always signed and listed one extra time, so
    a From added later breaks the signature instead of being shown to the reader.
    """
    fields, body = _split(_wire(message))

    by_name: dict[str, list[bytes]] = {}
    for raw_name, value in fields:
        by_name.setdefault(raw_name.decode("ascii").lower(), []).append(value)
    if "from" not in by_name:
        raise ValueError("message has no From header field; DKIM requires signing it")

    names: list[str] = []
    wanted = dict.fromkeys(name.lower() for name in ("from", *headers))
    for name in wanted:
        names.extend([name] * len(by_name.get(name, ())))
    names.append("from")

    hashed = bytearray()
    for name in names:
        instances = by_name.get(name)
        if instances:  # bottom-up (RFC 6376 5.4.2); the over-signed From finds none left
            hashed += b"%s:%s\r\n" % (name.encode("ascii"), _relaxed_value(instances.pop()))

    body_hash = base64.b64encode(hashlib.sha256(_relaxed_body(body)).digest()).decode("ascii")
    tags = [
        "v=1",
        "a=rsa-sha256",
        "c=relaxed/relaxed",
        f"d={key.domain}",
        f"s={key.selector}",
        f"t={int(time.time()) if timestamp is None else timestamp}",
    ]
    unsigned = _fold(tags, names, body_hash)  # ends in "b="
    hashed += b"dkim-signature:" + _relaxed_value(unsigned[len("DKIM-Signature:") :].encode())
    signature = base64.b64encode(key._sign(bytes(hashed))).decode("ascii")
    return (unsigned + _fold_b(signature) + "\r\n").encode("ascii") + message


def _wire(message: bytes) -> bytes:
    """The message with every line ending CRLF; built messages already are, cheaply checked.

    The substitution scans in Python's regex engine (0.7 ms for 40 KB); three counts in C
    tell whether there is anything to substitute.
    """
    crlf = message.count(b"\r\n")
    if message.count(b"\n") == crlf and message.count(b"\r") == crlf:
        return message
    return _LINE_ENDINGS.sub(b"\r\n", message)


def _split(wire: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Header fields as (name, still-folded value) pairs, and the body."""
    if wire.startswith(b"\r\n"):
        return [], wire[2:]
    end = wire.find(b"\r\n\r\n")
    head, body = (wire, b"") if end < 0 else (wire[: end + 2], wire[end + 4 :])
    fields: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + b"\r\n" + line)
        elif line:
            name, colon, value = line.partition(b":")
            name = name.rstrip(b" \t")
            if not colon or not _FIELD_NAME.fullmatch(name):
                raise ValueError(f"not a header field: {line[:60]!r}")
            fields.append((name, value))
    return fields, body


def _relaxed_value(value: bytes) -> bytes:
    """RFC 6376 3.4.2 for a field value: unfold, compress WSP, trim."""
    return _WSP_RUN.sub(b" ", value.replace(b"\r\n", b"")).strip(b" \t")


def _relaxed_body(body: bytes) -> bytes:
    """RFC 6376 3.4.4; an empty body stays empty (only "simple" turns it into CRLF)."""
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"  # what the SMTP client will send
    if b"\t" in body or b"  " in body:  # the regex scan is slow; most bodies skip it
        body = _BODY_WSP.sub(b" ", body)
    body = body.replace(b" \r\n", b"\r\n")
    end = len(body)
    while body.endswith(b"\r\n", 0, end):
        end -= 2
    return body[:end] + b"\r\n" if end else b""


def _fold(tags: list[str], names: list[str], body_hash: str) -> str:
    """The header up to "b=", folded at tag (and h= colon) boundaries within 78 columns.

    Relaxed canonicalization makes the folding whitespace irrelevant to the
    signature, so folding can be chosen freely before signing.
    """
    pieces = [(" ", tag + ";") for tag in tags]
    h_parts = [name + ":" for name in names]
    h_parts[0] = "h=" + h_parts[0]
    h_parts[-1] = h_parts[-1][:-1] + ";"
    pieces += [(" " if i == 0 else "", part) for i, part in enumerate(h_parts)]
    pieces.append((" ", f"bh={body_hash};"))

    lines: list[str] = []
    line = "DKIM-Signature:"
    for sep, piece in pieces:
        if len(line) + len(sep) + len(piece) <= _MAX_LINE:
            line += sep + piece
        else:
            lines.append(line)
            line = "\t" + piece
    lines.append(line)
    return "\r\n".join(lines) + "\r\n\tb="


def _fold_b(signature: str) -> str:
    """Continue "\\tb=" with the base64 signature, 77 characters per continuation line."""
    first = _MAX_LINE - len("\tb=")
    rest = signature[first:]
    chunks = [signature[:first]]
    chunks += [rest[i : i + _MAX_LINE - 1] for i in range(0, len(rest), _MAX_LINE - 1)]
    return "\r\n\t".join(chunks)
