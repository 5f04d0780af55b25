"""DKIM signing: every signature must verify with an independent implementation (dkimpy).

No network: dkimpy's DNS lookup is replaced by a function answering the one
TXT record the key publishes.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage

import dkim
import pytest
from aiosmtplib.protocol import normalize_message_line_endings
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postline.dkim import (
    SIGNED_HEADERS,
    DkimKey,
    _relaxed_body,
    _relaxed_value,
    _wire,
    dkim_dns_value,
    sign,
)
from postline.message import Attachment, Content, build_message

DOMAIN = "example.com"
SELECTOR = "pl2024"
EMPTY_SHA256 = base64.b64encode(hashlib.sha256(b"").digest()).decode()

Verify = Callable[[bytes], bool]


@pytest.fixture(scope="module")
def pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@pytest.fixture(scope="module")
def key(pem: str) -> DkimKey:
    return DkimKey(DOMAIN, SELECTOR, pem)


@pytest.fixture(scope="module")
def verify(pem: str) -> Verify:
    record = dkim_dns_value(pem).encode()
    wanted = f"{SELECTOR}._domainkey.{DOMAIN}.".encode()

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return record if name == wanted else None

    def run(message: bytes) -> bool:
        return bool(dkim.verify(message, dnsfunc=dnsfunc))

    return run


def signature_header(signed: bytes) -> bytes:
    """The DKIM-Signature field including its continuation lines and final CRLF."""
    match = re.match(rb"DKIM-Signature:.*?\r\n(?![ \t])", signed, re.S)
    assert match is not None
    return match.group(0)


def tags(signed: bytes) -> dict[str, str]:
    value = signature_header(signed).split(b":", 1)[1].decode()
    value = re.sub(r"\s+", "", value)
    pairs = (item.split("=", 1) for item in value.split(";") if item)
    return {name: val for name, val in pairs}


def plain(body: bytes = b"Hello,\r\n\r\nThis is a test.\r\n", **extra: str) -> bytes:
    head = {
        "From": "Postline <noreply@example.com>",
        "To": "alice@example.org",
        "Subject": "Your receipt",
        "Date": "Mon, 06 May 2024 10:00:00 +0000",
        "Message-ID": "<abc123@example.com>",
        "MIME-Version": "1.0",
        "Content-Type": "text/plain; charset=utf-8",
        **extra,
    }
    return b"".join(f"{k}: {v}\r\n".encode() for k, v in head.items()) + b"\r\n" + body


def test_simple_message_verifies_and_is_unchanged_after_the_header(
    key: DkimKey, verify: Verify
) -> None:
    message = plain()
    signed = sign(message, key)
    header = signature_header(signed)

    assert verify(signed)
    assert signed == header + message
    assert header.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;")
    lines = header[:-2].split(b"\r\n")
    assert all(len(line) <= 78 for line in lines)
    assert all(line.startswith(b"\t") for line in lines[1:])
    found = tags(signed)
    assert found["d"] == DOMAIN
    assert found["s"] == SELECTOR
    assert abs(int(found["t"]) - time.time()) < 60
    assert found["h"].split(":") == [
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "content-type",
        "from",
    ]


def test_explicit_timestamp_and_header_list(key: DkimKey, verify: Verify) -> None:
    signed = sign(plain(), key, timestamp=1_700_000_000, headers=("Subject", "X-Absent"))

    assert verify(signed)
    assert tags(signed)["t"] == "1700000000"
    assert tags(signed)["h"] == "from:subject:from"  # From always, absent names never


def test_multipart_alternative_with_attachment(key: DkimKey, verify: Verify) -> None:
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = "Shop <orders@example.com>"
    msg["To"] = "bob@example.net"
    msg["Subject"] = "Invoice #42"
    msg["List-Unsubscribe"] = "<https://example.com/u/xyz>"
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg.set_content("Plain part.\n")
    msg.add_alternative("<p>HTML part.</p>\n", subtype="html")
    msg.add_attachment(
        bytes(range(256)) * 8, maintype="application", subtype="pdf", filename="a.pdf"
    )
    message = msg.as_bytes()
    assert b"multipart/mixed" in message and b"multipart/alternative" in message

    signed = sign(message, key)

    assert verify(signed)
    assert {"list-unsubscribe", "list-unsubscribe-post", "content-type"} <= set(
        tags(signed)["h"].split(":")
    )


def test_whitespace_heavy_headers_and_body(key: DkimKey, verify: Verify) -> None:
    message = (
        b"From:   Ann \t <ann@example.com>  \r\n"
        b"To:alice@example.org\r\n"
        b"Subject: \t lots   of\t\tspace   \r\n"
        b"\r\n"
        b"  leading spaces\r\n"
        b"inner \t  runs\t\tof   wsp\r\n"
        b"trailing spaces   \r\n"
        b"\t\r\n"
        b"trailing tab\t\r\n"
        b"\r\n"
        b"   \r\n"
        b"\r\n"
    )
    signed = sign(message, key)
    assert verify(signed)
    # Relaxed canonicalization is the point: reflowed whitespace still verifies.
    assert verify(signed.replace(b"inner \t  runs", b"inner runs").replace(b"tab\t", b"tab"))
    assert verify(signed + b"\r\n\r\n")


def test_folded_long_subject(key: DkimKey, verify: Verify) -> None:
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = "noreply@example.com"
    msg["To"] = "alice@example.org"
    msg["Subject"] = " ".join(f"word{i}" for i in range(40))
    msg.set_content("Body.\n")
    message = msg.as_bytes()
    assert re.search(rb"Subject: [^\r]*\r\n [^\r]", message)  # really folded

    signed = sign(message, key)

    assert verify(signed)
    # Refolding the field differently is harmless under relaxed canonicalization.
    unfolded = re.sub(rb"\r\n (?=word)", b" ", signed)
    assert unfolded != signed
    assert verify(unfolded)


def test_non_ascii_utf8_subject_and_8bit_body(key: DkimKey, verify: Verify) -> None:
    msg = EmailMessage(policy=policy.SMTPUTF8)
    msg["From"] = "Zoë <zoe@example.com>"
    msg["To"] = "jürgen@example.de"
    msg["Subject"] = "Ihre Bestellung — Größe XL ✓ 注文"
    msg.set_content("Grüße aus Köln!\n価格: ¥1,000\n", cte="8bit")
    message = msg.as_bytes()
    assert "Größe".encode() in message and "価格".encode() in message

    signed = sign(message, key)

    assert verify(signed)
    assert not verify(signed.replace("Köln".encode(), b"Koln"))


def test_empty_body_hashes_the_empty_string(key: DkimKey, verify: Verify) -> None:
    # RFC 6376 3.4.4: relaxed leaves an empty body empty; only "simple" hashes a CRLF.
    for message in (plain(b""), plain(b"\r\n\r\n"), plain(b"")[:-2]):
        signed = sign(message, key)
        assert tags(signed)["bh"] == EMPTY_SHA256
        assert verify(signed)


def test_repeated_headers_are_all_signed_bottom_up(key: DkimKey, verify: Verify) -> None:
    message = plain(References="<second@example.com>").replace(
        b"MIME-Version:", b"References: <first@example.com>\r\nMIME-Version:"
    )
    assert message.count(b"References:") == 2

    signed = sign(message, key)

    assert tags(signed)["h"].count("references") == 2
    assert verify(signed)
    assert not verify(signed.replace(b"<first@", b"<fir5t@"))
    assert not verify(signed.replace(b"<second@", b"<5econd@"))


def test_lf_only_message(key: DkimKey, verify: Verify) -> None:
    message = plain().replace(b"\r\n", b"\n")
    assert b"\r" not in message

    signed = sign(message, key)
    header = signature_header(signed)

    assert signed == header + message
    assert header.endswith(b"\r\n")
    assert verify(signed)
    assert verify(normalize_message_line_endings(signed))
    # LF-only and CRLF spell the same wire message, so they get the same signature.
    lf, crlf = (signature_header(sign(m, key, timestamp=1)) for m in (message, plain()))
    assert lf == crlf


def test_wire_form_is_what_gets_signed(key: DkimKey, verify: Verify) -> None:
    # No final CRLF (with trailing WSP on the last line) and a bare CR: aiosmtplib
    # rewrites both before DATA, and the receiver verifies what it received.
    message = plain(b"line one\rline two\r\nlast line   ")

    signed = sign(message, key)

    assert signed.endswith(message)
    assert verify(normalize_message_line_endings(signed))


def test_tampering_fails(key: DkimKey, verify: Verify) -> None:
    signed = sign(plain(), key)
    assert verify(signed)

    body_at = signed.index(b"This is a test.")
    assert not verify(signed[:body_at] + b"t" + signed[body_at + 1 :])
    assert not verify(signed.replace(b"Subject: Your receipt", b"Subject: Your refund"))
    assert not verify(signed.replace(b"To: alice@", b"To: mallory@"))


@pytest.mark.parametrize("where", ["above", "below"])
def test_oversigned_from_rejects_a_second_from(key: DkimKey, verify: Verify, where: str) -> None:
    signed = sign(plain(), key)
    assert tags(signed)["h"].split(":").count("from") == 2
    evil = b"From: CEO <ceo@example.com>\r\n"
    at = signed.index(b"From: Postline")
    if where == "below":
        at = signed.index(b"\r\n", at) + 2

    assert not verify(signed[:at] + evil + signed[at:])


def test_rfc6376_canonicalization_example() -> None:
    # The worked example of RFC 6376 3.4.5, on the pieces dkimpy cannot parse ("B :").
    assert _relaxed_value(b" X\r\n") == b"X"  # (value of "A: X")
    assert _relaxed_value(b" Y\t\r\n\tZ  ") == b"Y Z"
    assert _relaxed_body(b" C \r\nD \t E\r\n\r\n\r\n") == b" C\r\nD E\r\n"
    assert _relaxed_body(b"\r\n") == b""
    assert _relaxed_body(b"x") == b"x\r\n"


def test_header_name_whitespace_before_colon_is_ignored(key: DkimKey) -> None:
    # dkimpy cannot parse "Subject :" at all, so check the h= list only.
    signed = sign(plain().replace(b"Subject:", b"Subject \t:"), key)
    assert "subject" in tags(signed)["h"].split(":")


def test_dns_value_publishes_the_public_key(pem: str) -> None:
    value = dkim_dns_value(pem)
    prefix = "v=DKIM1; k=rsa; p="
    assert value.startswith(prefix)
    public = serialization.load_der_public_key(base64.b64decode(value[len(prefix) :]))
    private = serialization.load_pem_private_key(pem.encode(), password=None)
    assert isinstance(public, rsa.RSAPublicKey)
    assert isinstance(private, rsa.RSAPrivateKey)
    assert public.public_numbers() == private.public_key().public_numbers()


def test_rejects_unusable_keys_and_messages(pem: str, key: DkimKey) -> None:
    with pytest.raises(ValueError):
        DkimKey("example.com; x=1", SELECTOR, pem)
    ed_pem = (
        ed25519.Ed25519PrivateKey.generate()
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    with pytest.raises(TypeError):
        DkimKey(DOMAIN, SELECTOR, ed_pem)
    with pytest.raises(ValueError, match="From"):
        sign(b"To: a@example.org\r\n\r\nhi\r\n", key)
    with pytest.raises(ValueError, match="header field"):
        sign(b"From: a@example.com\r\nnot a header\r\n\r\nhi\r\n", key)


_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs"), whitelist_characters=" \t"),
    max_size=80,
)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(subject=_TEXT, lines=st.lists(_TEXT, max_size=12), terminated=st.booleans())
def test_property_sign_then_verify(
    key: DkimKey, verify: Verify, subject: str, lines: list[str], terminated: bool
) -> None:
    body = "\r\n".join(lines) + ("\r\n" if terminated else "")
    message = plain(body.encode(), Subject=subject)

    signed = sign(message, key)

    assert signed.endswith(message)
    assert verify(normalize_message_line_endings(signed))
    if terminated:
        assert verify(signed)


def test_benchmark_against_dkimpy(pem: str, key: DkimKey, verify: Verify) -> None:
    paragraph = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n"
    message = plain(paragraph * (5000 // len(paragraph)))
    assert 4900 < len(message) < 5600

    started = time.perf_counter()
    for _ in range(500):
        ours = sign(message, key)
    ours_ms = (time.perf_counter() - started) / 500 * 1000

    include = [h.encode() for h in SIGNED_HEADERS if h.title().encode() in message]
    started = time.perf_counter()
    for _ in range(100):
        theirs = dkim.sign(
            message,
            SELECTOR.encode(),
            DOMAIN.encode(),
            pem.encode(),
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=[*include, b"from"],
        )
    theirs_ms = (time.perf_counter() - started) / 100 * 1000

    assert verify(ours)
    assert verify(theirs + message)
    print(
        f"\nDKIM sign, {len(message)} byte message: postline {ours_ms:.3f} ms/msg "
        f"(500 signs), dkimpy {theirs_ms:.3f} ms/msg (100 signs), "
        f"{theirs_ms / ours_ms:.1f}x"
    )


#: Bytes that steer canonicalization: white space runs, bare CR and LF, CRLF.
_CANON_BYTES = st.lists(st.sampled_from([b"a", b" ", b"  ", b"\t", b"\r", b"\n", b"\r\n"])).map(
    b"".join
)


def _relaxed_body_by_regex(body: bytes) -> bytes:
    """RFC 6376 3.4.4 as written before the shortcuts: the regex over every body."""
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"
    body = re.sub(rb"[ \t]{2,}|\t", b" ", body).replace(b" \r\n", b"\r\n")
    end = len(body)
    while body.endswith(b"\r\n", 0, end):
        end -= 2
    return body[:end] + b"\r\n" if end else b""


@settings(max_examples=300, deadline=None)
@given(data=_CANON_BYTES)
def test_canonicalization_shortcuts_change_nothing(data: bytes) -> None:
    """The checks that skip the regex scans give what the scans give."""
    assert _wire(data) == re.sub(rb"\r\n|\n|\r(?!\n)", b"\r\n", data)
    wire_body = _wire(data)
    assert _relaxed_body(wire_body) == _relaxed_body_by_regex(wire_body)


@pytest.mark.parametrize("shape", ["text", "html", "mixed"])
def test_built_messages_verify_with_dkimpy(key: DkimKey, verify: Verify, shape: str) -> None:
    """What build_message writes (CRLF already, the canonicalization shortcuts taken) verifies."""
    content = Content(
        "Zoë Ålund",
        "billing@example.com",
        [f"user{n}@example.org" for n in range(30)],
        subject="Ihre Rechnung für März — " + "lange Betreffzeile " * 5,
        text=None if shape == "html" else "Grüße\taus  München \n" * 50 + "x" * 200,
        html="<p>Hallo</p>\n" if shape != "text" else None,
        attachments=[Attachment("a.pdf", bytes(range(256)) * 8, "application/pdf")]
        if shape == "mixed"
        else [],
    )
    message = build_message(content, message_id="<m1@example.com>", date=datetime.now(UTC))
    assert verify(sign(message, key))
