"""build_message: the RFC 5322 bytes handed to DATA, parsed back as a mail client would."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from email import message_from_bytes, message_from_string, policy
from email.message import EmailMessage, Message
from email.utils import parsedate_to_datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postline.message import Attachment, Content, build_message

DATE = datetime(2024, 5, 17, 9, 30, 15, tzinfo=UTC)
MESSAGE_ID = "<01hxyz0123456789abcdefghjk@mx.example.test>"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


def build(content: Content) -> bytes:
    return build_message(content, message_id=MESSAGE_ID, date=DATE)


def parse(raw: bytes) -> EmailMessage:
    msg = message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def parse_utf8(raw: bytes) -> EmailMessage:
    """An SMTPUTF8 message: headers are raw UTF-8, not encoded words."""
    msg = message_from_string(raw.decode("utf-8"), policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def lf(text: str) -> str:
    return text.replace("\r\n", "\n")


def header_block(raw: bytes) -> bytes:
    return raw.split(b"\r\n\r\n", 1)[0]


def content(**overrides: object) -> Content:
    fields: dict[str, object] = {
        "from_name": "Acme Billing",
        "from_address": "billing@acme.example",
        "to": ["alice@example.com"],
        "subject": "Your invoice",
        "text": "Hello Alice,\nyour invoice is attached.\n",
    }
    fields.update(overrides)
    return Content(**fields)  # type: ignore[arg-type]


def test_headers_present_and_parse_back() -> None:
    msg = parse(
        build(
            content(
                to=["alice@example.com", "bob@example.org"],
                cc=["carol@example.net"],
                reply_to=["support@acme.example"],
            )
        )
    )
    assert msg["From"] == "Acme Billing <billing@acme.example>"
    assert msg["From"].addresses[0].addr_spec == "billing@acme.example"
    assert [a.addr_spec for a in msg["To"].addresses] == ["alice@example.com", "bob@example.org"]
    assert [a.addr_spec for a in msg["Cc"].addresses] == ["carol@example.net"]
    assert [a.addr_spec for a in msg["Reply-To"].addresses] == ["support@acme.example"]
    assert msg["Subject"] == "Your invoice"
    assert msg["Message-ID"] == MESSAGE_ID
    assert parsedate_to_datetime(msg["Date"]) == DATE
    assert msg["MIME-Version"] == "1.0"


def test_each_header_appears_once() -> None:
    msg = parse(build(content(cc=["c@example.net"], reply_to=["r@example.net"])))
    for name in ("From", "To", "Cc", "Reply-To", "Subject", "Date", "Message-ID"):
        assert len(msg.get_all(name) or []) == 1, name


def test_no_bcc_header_ever() -> None:
    raw = build(content(to=["a@example.com"], cc=["b@example.com"]))
    assert parse(raw)["Bcc"] is None
    assert not re.search(rb"(?im)^bcc:", raw)


def test_optional_headers_absent_when_not_given() -> None:
    msg = parse(build(content()))
    assert msg["Cc"] is None
    assert msg["Reply-To"] is None


def test_without_to_uses_undisclosed_recipients() -> None:
    msg = parse(build(content(to=[], cc=["c@example.net"])))
    assert msg["To"] == "undisclosed-recipients:;"
    assert msg["To"].addresses == ()
    assert msg["Bcc"] is None


def test_from_without_display_name() -> None:
    msg = parse(build(content(from_name="")))
    assert msg["From"] == "billing@acme.example"


def test_date_in_other_timezone() -> None:
    date = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=-5)))
    msg = parse(build_message(content(), message_id=MESSAGE_ID, date=date))
    assert parsedate_to_datetime(msg["Date"]) == date
    assert msg["Date"].endswith("-0500")


def test_custom_headers_present() -> None:
    headers = {
        "X-Campaign": "spring-sale",
        "List-Unsubscribe": "<https://acme.example/u/123>, <mailto:unsub@acme.example>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        "X-Entity-Ref-ID": "inv-2024-0042",
    }
    msg = parse(build(content(headers=headers)))
    for name, value in headers.items():
        assert msg[name] == value


def test_text_only_is_text_plain() -> None:
    msg = parse(build(content()))
    assert msg.get_content_type() == "text/plain"
    assert not msg.is_multipart()
    assert lf(msg.get_content()) == "Hello Alice,\nyour invoice is attached.\n"


def test_html_only_is_text_html() -> None:
    msg = parse(build(content(text=None, html="<p>Hello <b>Alice</b></p>")))
    assert msg.get_content_type() == "text/html"
    assert msg.get_content().strip() == "<p>Hello <b>Alice</b></p>"


def test_text_and_html_is_multipart_alternative() -> None:
    msg = parse(build(content(html="<p>Hello Alice</p>")))
    assert msg.get_content_type() == "multipart/alternative"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    plain = msg.get_body(preferencelist=("plain",))
    html = msg.get_body(preferencelist=("html",))
    assert isinstance(plain, EmailMessage)
    assert isinstance(html, EmailMessage)
    assert "your invoice is attached" in plain.get_content()
    assert "<p>Hello Alice</p>" in html.get_content()


def test_attachments_round_trip() -> None:
    attachments = [
        Attachment("invoice.pdf", b"%PDF-1.7\n" + bytes(range(256)), "application/pdf"),
        Attachment("logo.png", PNG, "image/png"),
        Attachment("data.bin", b"\x00\x01\x02\xff"),
        Attachment("notes.txt", "Grüße\r\nzwei Zeilen\r\n".encode(), "text/plain"),
    ]
    msg = parse(build(content(html="<p>Invoice</p>", attachments=attachments)))
    assert msg.get_content_type() == "multipart/mixed"
    found = list(msg.iter_attachments())
    assert [a.get_filename() for a in found] == [a.filename for a in attachments]
    for part, original in zip(found, attachments, strict=True):
        assert part.get_content_type() == original.content_type
        assert part.get_content_disposition() == "attachment"
        assert part.get_payload(decode=True) == original.content
    body = msg.get_body(preferencelist=("html", "plain"))
    assert isinstance(body, EmailMessage)
    assert body.get_content_type() == "text/html"


def test_attachment_with_non_ascii_filename() -> None:
    attachment = Attachment("Rechnung März 2024.pdf", b"%PDF", "application/pdf")
    msg = parse(build(content(attachments=[attachment])))
    (part,) = list(msg.iter_attachments())
    assert part.get_filename() == "Rechnung März 2024.pdf"
    assert part.get_payload(decode=True) == b"%PDF"


@pytest.mark.parametrize(
    "subject",
    [
        "Ihre Rechnung für März",
        "Votre commande n° 42 est expédiée ✓",
        "注文確認のお知らせ",
        "🎉 " + "Long subject that will need folding across several lines " * 4,
    ],
)
def test_non_ascii_subject_is_encoded_and_decodes_back(subject: str) -> None:
    raw = build(content(subject=subject))
    assert header_block(raw).isascii()  # RFC 2047 encoded words, not raw UTF-8
    assert parse(raw)["Subject"] == subject


def test_non_ascii_display_name() -> None:
    raw = build(content(from_name="Zoë Ålund"))
    assert header_block(raw).isascii()
    msg = parse(raw)
    assert msg["From"].addresses[0].display_name == "Zoë Ålund"
    assert msg["From"].addresses[0].addr_spec == "billing@acme.example"


def test_non_ascii_address_uses_smtputf8() -> None:
    raw = build(content(to=["jöhn@example.com"]))
    assert "jöhn@example.com".encode() in header_block(raw)
    msg = parse_utf8(raw)
    assert [a.addr_spec for a in msg["To"].addresses] == ["jöhn@example.com"]


def test_non_ascii_reply_to_address_is_not_mangled() -> None:
    # An encoded word inside an addr-spec is not an address (RFC 2047 section 5).
    raw = build(content(reply_to=["jöhn@example.com"]))
    assert b"=?utf-8?" not in header_block(raw)
    msg = parse_utf8(raw)
    assert [a.addr_spec for a in msg["Reply-To"].addresses] == ["jöhn@example.com"]


def test_non_ascii_body() -> None:
    text = "Grüße aus München — 東京\n"
    msg = parse(build(content(text=text, html="<p>Grüße</p>")))
    plain = msg.get_body(preferencelist=("plain",))
    assert isinstance(plain, EmailMessage)
    assert lf(plain.get_content()) == text


def assert_crlf_only(raw: bytes) -> None:
    assert b"\n" in raw
    assert re.search(rb"(?<!\r)\n", raw) is None, "bare LF"
    assert re.search(rb"\r(?!\n)", raw) is None, "bare CR"


def test_crlf_line_endings() -> None:
    raw = build(
        content(
            text="line one\nline two\r\nline three\n",
            html="<p>one</p>\n<p>two</p>\n",
            cc=["c@example.net"],
            attachments=[Attachment("logo.png", PNG, "image/png")],
        )
    )
    assert_crlf_only(raw)
    assert b"\r\n\r\n" in raw


def test_lines_fit_smtp_limit() -> None:
    raw = build(content(text="word " * 2000, subject="s" * 300, attachments=[]))
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))


@settings(max_examples=40, deadline=None)
@given(
    subject=st.text(
        alphabet=st.characters(exclude_categories=["Cc", "Cs", "Zl", "Zp"]), max_size=120
    ),
    text=st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=300),
)
def test_build_message_property(subject: str, text: str) -> None:
    raw = build(content(subject=subject, text=text))
    assert_crlf_only(raw)
    msg = parse(raw)
    assert msg["Bcc"] is None
    assert msg["Message-ID"] == MESSAGE_ID
    assert isinstance(msg, Message)
    assert " ".join(str(msg["Subject"]).split()) == " ".join(subject.split())
