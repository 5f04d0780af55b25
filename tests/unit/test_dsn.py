"""RFC 3464 delivery status notifications: structure, one block per recipient, no injection."""

from __future__ import annotations

import email
import re
from datetime import UTC, datetime, timedelta, timezone
from email import policy
from email.message import EmailMessage, Message

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postline.delivery.dsn import (
    SUBJECT_DELAYED,
    SUBJECT_FAILED,
    FailedRecipient,
    OriginalMessage,
    build_dsn,
    needs_dsn,
)

NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
ARRIVAL = NOW - timedelta(days=5)
ORIGINAL_HEADERS = (
    b"From: Shop <orders@shop.example>\r\n"
    b"To: alice@example.com, bob@example.net\r\n"
    b"Subject: Your order 1234\r\n"
    b"Message-ID: <orig-1@shop.example>\r\n"
    b"Date: Mon, 01 May 2024 07:08:09 +0000\r\n"
)
INJECTION = "550 x\r\nSubject: pwned\r\n\r\nFinal-Recipient: rfc822; evil@x"


def original(
    headers: bytes = ORIGINAL_HEADERS, envelope_from: str = "orders@shop.example"
) -> OriginalMessage:
    return OriginalMessage(
        envelope_from=envelope_from,
        headers=headers,
        message_id="<orig-1@shop.example>",
        envelope_id="em_01hx3k9v7c8q2w",
    )


def recipient(
    address: str = "alice@example.com",
    diagnostic: str | None = "550 5.1.1 user unknown",
    *,
    action: str = "failed",
    status: str = "5.1.1",
    remote_mta: str | None = "mx1.example.com",
    last_attempt: datetime | None = NOW,
) -> FailedRecipient:
    return FailedRecipient(
        address=address,
        action=action,
        status=status,
        remote_mta=remote_mta,
        diagnostic=diagnostic,
        last_attempt=last_attempt,
    )


def build(
    *recipients: FailedRecipient,
    orig: OriginalMessage | None = None,
    notify_to: str = "orders@shop.example",
) -> bytes:
    return build_dsn(
        reporting_mta="mta.postline.example",
        original=orig or original(),
        recipients=recipients or (recipient(),),
        notify_to=notify_to,
        arrival=ARRIVAL,
        now=NOW,
        message_id="<dsn-1@mta.postline.example>",
    )


def parse(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def parts(data: bytes) -> list[EmailMessage]:
    return list(parse(data).iter_parts())  # type: ignore[arg-type]


def status_blocks(data: bytes) -> list[Message]:
    payload = parts(data)[1].get_payload()
    assert isinstance(payload, list)
    blocks = [block for block in payload if isinstance(block, Message)]
    assert len(blocks) == len(payload)
    return blocks


def recipient_blocks(data: bytes) -> list[Message]:
    return status_blocks(data)[1:]


def raw_status_part(data: bytes) -> bytes:
    """The bytes of the message/delivery-status part, between its boundaries."""
    boundary = parse(data).get_boundary()
    assert boundary is not None
    sections = data.split(b"--" + boundary.encode())
    return next(s for s in sections if b"Content-Type: message/delivery-status" in s)


def field_lines(data: bytes, name: str) -> list[bytes]:
    """Lines that begin a field called ``name`` anywhere in the delivery-status part."""
    prefix = name.lower().encode() + b":"
    return [ln for ln in raw_status_part(data).split(b"\r\n") if ln.lower().startswith(prefix)]


# --- structure ------------------------------------------------------------------------------


def test_is_a_multipart_report_of_type_delivery_status() -> None:
    msg = parse(build())
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert [p.get_content_type() for p in parts(build())] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]


def test_top_level_headers() -> None:
    msg = parse(build())
    assert msg["From"] == "Mail Delivery System <MAILER-DAEMON@mta.postline.example>"
    assert msg["To"] == "orders@shop.example"
    assert msg["Subject"] == SUBJECT_FAILED
    assert msg["Date"].datetime == NOW
    assert msg["Message-ID"] == "<dsn-1@mta.postline.example>"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["MIME-Version"] == "1.0"


def test_output_uses_crlf_line_ends_only() -> None:
    data = build(recipient(), recipient("bob@example.net"))
    assert data.endswith(b"\r\n")
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert b"\r" not in data.replace(b"\r\n", b"")


def test_per_message_fields() -> None:
    block = status_blocks(build())[0]
    assert block["Reporting-MTA"] == "dns; mta.postline.example"
    assert block["Original-Envelope-Id"] == "em_01hx3k9v7c8q2w"
    assert email.utils.parsedate_to_datetime(block["Arrival-Date"]) == ARRIVAL
    assert block["Final-Recipient"] is None


def test_envelope_id_is_omitted_when_unknown_and_xtext_encoded_otherwise() -> None:
    bare = OriginalMessage("orders@shop.example", ORIGINAL_HEADERS, None, None)
    assert status_blocks(build(orig=bare))[0]["Original-Envelope-Id"] is None
    odd = OriginalMessage("orders@shop.example", ORIGINAL_HEADERS, None, "a+b=c d")
    assert status_blocks(build(orig=odd))[0]["Original-Envelope-Id"] == "a+2Bb+3Dc+20d"


def test_each_recipient_gets_its_own_block() -> None:
    data = build(
        recipient("alice@example.com", "550 5.1.1 user unknown", remote_mta="mx1.example.com"),
        recipient("bob@example.net", "554 5.7.1 blocked", status="5.7.1", remote_mta="mx.net"),
        recipient(
            "carol@example.org",
            "451 4.4.1 timeout",
            status="4.4.7",
            remote_mta="mx.example.org",
            last_attempt=NOW - timedelta(hours=1),
        ),
    )
    blocks = recipient_blocks(data)
    assert [(b["Final-Recipient"], b["Action"], b["Status"]) for b in blocks] == [
        ("rfc822; alice@example.com", "failed", "5.1.1"),
        ("rfc822; bob@example.net", "failed", "5.7.1"),
        ("rfc822; carol@example.org", "failed", "4.4.7"),
    ]
    assert [b["Remote-MTA"] for b in blocks] == [
        "dns; mx1.example.com",
        "dns; mx.net",
        "dns; mx.example.org",
    ]
    assert [b["Diagnostic-Code"] for b in blocks] == [
        "smtp; 550 5.1.1 user unknown",
        "smtp; 554 5.7.1 blocked",
        "smtp; 451 4.4.1 timeout",
    ]
    assert email.utils.parsedate_to_datetime(blocks[2]["Last-Attempt-Date"]) == NOW - timedelta(
        hours=1
    )
    # Trap 10: one Final-Recipient per recipient, never several joined in one field.
    assert all(len(b.get_all("Final-Recipient", [])) == 1 for b in blocks)
    assert len(field_lines(data, "Final-Recipient")) == 3
    assert all(b"," not in line for line in field_lines(data, "Final-Recipient"))


def test_optional_recipient_fields_are_omitted_when_unknown() -> None:
    block = recipient_blocks(
        build(recipient(status="4.4.7", diagnostic=None, remote_mta=None, last_attempt=None))
    )[0]
    assert block["Final-Recipient"] == "rfc822; alice@example.com"
    assert block["Status"] == "4.4.7"
    for name in ("Remote-MTA", "Diagnostic-Code", "Last-Attempt-Date"):
        assert block[name] is None


def test_a_diagnostic_that_cleans_to_nothing_is_omitted() -> None:
    block = recipient_blocks(build(recipient(diagnostic="\r\n\x00\t ")))[0]
    assert block["Diagnostic-Code"] is None


def test_non_ascii_recipient_uses_the_utf8_address_type_escaped() -> None:
    data = build(recipient("jörg@exämple.com"))
    assert recipient_blocks(data)[0]["Final-Recipient"] == "utf-8; j\\x{F6}rg@ex\\x{E4}mple.com"
    assert raw_status_part(data).isascii()


def test_delayed_only_report_says_so_in_the_subject() -> None:
    data = build(recipient(action="delayed", status="4.2.2", diagnostic="452 4.2.2 full"))
    assert parse(data)["Subject"] == SUBJECT_DELAYED
    assert recipient_blocks(data)[0]["Action"] == "delayed"
    mixed = build(recipient(action="delayed", status="4.2.2"), recipient("bob@example.net"))
    assert parse(mixed)["Subject"] == SUBJECT_FAILED


def test_non_ascii_notify_to_is_written_as_utf8() -> None:
    data = build(notify_to="jörg@exämple.com")
    assert parse(data)["To"] == "jörg@exämple.com"
    assert "jörg@exämple.com".encode() in data


# --- human-readable part ----------------------------------------------------------------------


def test_explanation_lists_each_recipient_and_diagnostic_on_one_line() -> None:
    data = build(
        recipient("alice@example.com", "550 5.1.1 user unknown"),
        recipient("bob@example.net", "554 5.7.1 " + "spam " * 60, status="5.7.1"),
        recipient("carol@example.org", None, status="4.4.7", remote_mta=None),
    )
    text = parts(data)[0].get_content()
    lines = text.splitlines()
    alice = [ln for ln in lines if "alice@example.com" in ln]
    bob = [ln for ln in lines if "bob@example.net" in ln]
    carol = [ln for ln in lines if "carol@example.org" in ln]
    assert len(alice) == len(bob) == len(carol) == 1
    assert "mx1.example.com said: 550 5.1.1 user unknown" in alice[0]
    assert bob[0].endswith("spam spam")  # a long diagnostic stays one line once decoded
    assert "gave up" in carol[0]
    assert "4.4.7" in carol[0]
    assert "mta.postline.example" in text
    assert "<orig-1@shop.example>" in text


# --- original headers -------------------------------------------------------------------------


def test_original_headers_are_included() -> None:
    headers = parts(build())[2]
    assert headers.get_content_type() == "text/rfc822-headers"
    content = headers.get_content()
    assert "Subject: Your order 1234" in content
    assert "Message-ID: <orig-1@shop.example>" in content


def test_original_body_is_never_echoed() -> None:
    data = build(orig=original(ORIGINAL_HEADERS + b"\r\nsecret body line\r\n"))
    assert b"secret body line" not in data
    assert "Subject: Your order 1234" in parts(data)[2].get_content()


def test_8bit_and_overlong_original_headers_are_quoted_printable() -> None:
    raw = (
        "Subject: Bestellbestätigung\r\nX-Long: ".encode() + b"y" * 2000 + b"\r\nX-Nul: a\x00b\r\n"
    )
    data = build(orig=original(raw))
    part = parts(data)[2]
    assert part["Content-Transfer-Encoding"] == "quoted-printable"
    assert data.isascii()
    decoded = part.get_payload(decode=True)
    assert isinstance(decoded, bytes)
    assert decoded.replace(b"\r\n", b"\n") == raw.replace(b"\r\n", b"\n")
    assert max(len(line) for line in data.split(b"\r\n")) <= 998


# --- untrusted remote text --------------------------------------------------------------------


def test_crlf_injection_in_diagnostic_creates_no_header_and_no_field() -> None:
    data = build(recipient(diagnostic=INJECTION), recipient("bob@example.net"))
    msg = parse(data)
    assert msg["Subject"] == SUBJECT_FAILED
    assert len(msg.get_all("Subject", [])) == 1
    for part in [msg, *parts(data)]:
        assert all("pwned" not in str(v) for k, v in part.items() if k.lower() != "subject")
        assert all("pwned" not in k for k in part)
    blocks = recipient_blocks(data)
    assert len(blocks) == 2
    assert [b["Final-Recipient"] for b in blocks] == [
        "rfc822; alice@example.com",
        "rfc822; bob@example.net",
    ]
    assert len(field_lines(data, "Final-Recipient")) == 2
    assert field_lines(data, "Subject") == []
    assert blocks[0]["Diagnostic-Code"] == (
        "smtp; 550 x Subject: pwned Final-Recipient: rfc822; evil@x"
    )
    text_lines = parts(data)[0].get_content().splitlines()
    assert not any(ln.startswith(("Subject:", "Final-Recipient:")) for ln in text_lines)


def test_injection_through_remote_mta_is_neutralised() -> None:
    data = build(recipient(remote_mta="mx.example.com\r\nFinal-Recipient: rfc822; evil@x"))
    assert len(field_lines(data, "Final-Recipient")) == 1
    assert recipient_blocks(data)[0]["Remote-MTA"] == (
        "dns; mx.example.com Final-Recipient: rfc822; evil@x"
    )


def test_control_characters_are_stripped() -> None:
    block = recipient_blocks(build(recipient(diagnostic="550\x00 5.1.1\x1b[31m bad\x7f\x85 user")))[
        0
    ]
    assert block["Diagnostic-Code"] == "smtp; 550 5.1.1[31m bad user"


def test_ten_kilobyte_diagnostic_is_truncated_to_1024_bytes() -> None:
    data = build(recipient(diagnostic="550 5.1.1 " + "no such user here " * 600))
    value = recipient_blocks(data)[0]["Diagnostic-Code"]
    assert value.startswith("smtp; 550 5.1.1 no such user here")
    assert len(value.removeprefix("smtp; ").encode()) <= 1024
    assert max(len(line) for line in data.split(b"\r\n")) <= 998


def test_truncation_never_splits_an_escape() -> None:
    data = build(recipient(diagnostic="550 " + "é" * 5000))
    value = recipient_blocks(data)[0]["Diagnostic-Code"]
    # The escapes run past the 998-byte line limit, so the fold inserts one space: between two.
    assert re.fullmatch(r"smtp; 550 (\\x\{E9\})+ (\\x\{E9\})+", value)
    diagnostic = value.removeprefix("smtp; 550 ").replace(" ", "")
    assert len(diagnostic.encode()) <= 1024 - 4
    assert re.fullmatch(r"(\\x\{E9\})+", diagnostic)
    assert max(len(line) for line in data.split(b"\r\n")) <= 998


def test_non_ascii_diagnostic_gives_ascii_fields() -> None:
    data = build(recipient(diagnostic="550 5.1.1 Benutzer unbekannt — ユーザー不明 \\ 🙂"))
    assert raw_status_part(data).isascii()
    assert recipient_blocks(data)[0]["Diagnostic-Code"] == (
        "smtp; 550 5.1.1 Benutzer unbekannt \\x{2014} "
        "\\x{30E6}\\x{30FC}\\x{30B6}\\x{30FC}\\x{4E0D}\\x{660E} \\x{5C} \\x{1F642}"
    )
    text = parts(data)[0].get_content()
    assert "Benutzer unbekannt \\x{2014}" in text


def test_long_diagnostic_without_spaces_still_keeps_lines_within_998_bytes() -> None:
    data = build(recipient(diagnostic="550 " + "z" * 5000))
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    value = recipient_blocks(data)[0]["Diagnostic-Code"]
    assert value.replace(" ", "").removeprefix("smtp;550") == "z" * (1024 - 4)


def test_folding_at_spaces_preserves_the_text() -> None:
    diagnostic = " ".join(f"word{i}" for i in range(100))
    data = build(recipient(diagnostic=f"550 {diagnostic}"))
    assert recipient_blocks(data)[0]["Diagnostic-Code"] == f"smtp; 550 {diagnostic}"
    status_lines = raw_status_part(data).split(b"\r\n")
    assert max(len(line) for line in status_lines) <= 78
    assert not any(line.strip() == b"" and line for line in status_lines)


# --- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address", ["a@b.com\r\nBcc: x@y", "a@b.com\n", "a\r@b.com", "a@b\x00.com", "a\u2028@b.com"]
)
def test_recipient_address_with_line_breaks_is_refused(address: str) -> None:
    with pytest.raises(ValueError, match="control"):
        recipient(address)


def test_overlong_recipient_address_is_refused() -> None:
    with pytest.raises(ValueError, match="254"):
        recipient("a" * 250 + "@b.com")


@pytest.mark.parametrize("notify_to", ["x@y.com\r\nSubject: pwned", "", "<>", "nobody"])
def test_bad_notify_to_is_refused(notify_to: str) -> None:
    with pytest.raises(ValueError):
        build(notify_to=notify_to)


def test_notify_to_in_angle_brackets_is_accepted() -> None:
    assert parse(build(notify_to="<orders@shop.example>"))["To"] == "orders@shop.example"


@pytest.mark.parametrize(
    ("action", "status"),
    [("bounced", "5.1.1"), ("failed", "550"), ("failed", "2.0.0"), ("delayed", "5.1.1")],
)
def test_inconsistent_action_or_status_is_refused(action: str, status: str) -> None:
    with pytest.raises(ValueError):
        recipient(action=action, status=status)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        build_dsn(
            reporting_mta="mta.example",
            original=original(),
            recipients=[],
            notify_to="a@b.com",
            arrival=ARRIVAL,
            now=NOW,
            message_id="<x@y>",
        )
    with pytest.raises(ValueError, match="host name"):
        build_dsn(
            reporting_mta="mta.example\r\nX: y",
            original=original(),
            recipients=[recipient()],
            notify_to="a@b.com",
            arrival=ARRIVAL,
            now=NOW,
            message_id="<x@y>",
        )
    with pytest.raises(ValueError, match="aware"):
        build_dsn(
            reporting_mta="mta.example",
            original=original(),
            recipients=[recipient()],
            notify_to="a@b.com",
            arrival=ARRIVAL.replace(tzinfo=None),
            now=NOW,
            message_id="<x@y>",
        )
    with pytest.raises(ValueError, match="aware"):
        recipient(last_attempt=datetime(2024, 1, 1))


def test_dates_keep_their_zone() -> None:
    cest = timezone(timedelta(hours=2))
    data = build(recipient(last_attempt=NOW.astimezone(cest)))
    assert recipient_blocks(data)[0]["Last-Attempt-Date"].endswith("+0200")


# --- needs_dsn --------------------------------------------------------------------------------


@pytest.mark.parametrize("sender", ["", "<>", " <> ", "MAILER-DAEMON", "mailer-daemon@x.example"])
def test_no_dsn_for_null_or_daemon_sender(sender: str) -> None:
    assert not needs_dsn(original(envelope_from=sender))


def test_no_dsn_for_postmaster_sender() -> None:
    assert not needs_dsn(original(envelope_from="Postmaster@shop.example"))


def test_normal_original_needs_a_dsn() -> None:
    assert needs_dsn(original())


@pytest.mark.parametrize(
    "header",
    [
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=x",
        b"Content-Type: Multipart/Report (a bounce);\r\n report-type=disposition-notification",
        b"Auto-Submitted: auto-replied",
        b"Auto-Submitted: auto-generated (daily report)",
        b"Auto-Submitted: AUTO-NOTIFIED; owner-email=x@y",
        b"Auto-Submitted:",
    ],
)
def test_no_dsn_for_reports_and_automatic_mail(header: bytes) -> None:
    assert not needs_dsn(original(ORIGINAL_HEADERS + header + b"\r\n"))


@pytest.mark.parametrize(
    "header",
    [
        b"Auto-Submitted: no",
        b"Auto-Submitted: No (a person wrote this)",
        b"Precedence: bulk",
        b"Precedence: junk",
        b"Precedence: list",
        b"Content-Type: multipart/mixed; boundary=x",
    ],
)
def test_transactional_markers_do_not_suppress_the_dsn(header: bytes) -> None:
    assert needs_dsn(original(ORIGINAL_HEADERS + header + b"\r\n"))


@given(st.binary(max_size=2000))
def test_needs_dsn_never_raises_on_garbage_headers(headers: bytes) -> None:
    assert isinstance(needs_dsn(original(headers)), bool)


# --- properties -------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(st.lists(st.text(max_size=3000), min_size=1, max_size=5))
def test_any_diagnostic_yields_one_block_per_recipient(diagnostics: list[str]) -> None:
    recipients = [
        recipient(f"user{i}@example.com", diagnostic) for i, diagnostic in enumerate(diagnostics)
    ]
    data = build(*recipients)
    msg = parse(data)
    assert msg.get_content_type() == "multipart/report"
    assert sorted(msg.keys()) == sorted(
        [
            "From",
            "To",
            "Subject",
            "Date",
            "Message-ID",
            "Auto-Submitted",
            "MIME-Version",
            "Content-Type",
        ]
    )
    assert len(parts(data)) == 3
    blocks = recipient_blocks(data)
    assert [b["Final-Recipient"] for b in blocks] == [
        f"rfc822; user{i}@example.com" for i in range(len(diagnostics))
    ]
    assert len(field_lines(data, "Final-Recipient")) == len(diagnostics)
    assert raw_status_part(data).isascii()
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    for block in blocks:
        code = block["Diagnostic-Code"]
        if code is not None:
            assert len(code.removeprefix("smtp; ").encode()) <= 1024


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=3000))
def test_any_original_header_block_keeps_the_report_intact(headers: bytes) -> None:
    data = build(recipient(), recipient("bob@example.net"), orig=original(headers))
    assert [p.get_content_type() for p in parts(data)] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    assert len(field_lines(data, "Final-Recipient")) == 2
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    assert data.isascii()
