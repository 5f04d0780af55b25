"""Addresses and headers from clients: what passes, and that nothing breaks out of a line."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postline.validation import (
    MAX_HEADER_VALUE,
    STRUCTURAL_HEADERS,
    OverLimit,
    SubmissionLimits,
    check_attachment_type,
    check_custom_header,
    check_header_text,
    check_request_limits,
    normalize_address,
    parse_mailbox,
)
from tests.harness.inputs import LINE_BREAKS

# --- normalize_address ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("user@example.com", "user@example.com"),
        ("first.last+tag@example.com", "first.last+tag@example.com"),
        ("user@EXAMPLE.COM", "user@example.com"),
        ("  user@example.com  ", "user@example.com"),
        ("user@mail.sub.example.co.uk", "user@mail.sub.example.co.uk"),
        ("o'brien@example.com", "o'brien@example.com"),
        ("delivered@simulator.postline.test", "delivered@simulator.postline.test"),
        ("user@xn--bcher-kva.example", "user@xn--bcher-kva.example"),
    ],
)
def test_normalize_address_valid(address: str, expected: str) -> None:
    assert normalize_address(address) == expected


@pytest.mark.parametrize(
    ("address", "domain"),
    [
        ("user@Bücher.Example", "xn--bcher-kva.example"),
        ("user@MÜNCHEN.example", "xn--mnchen-3ya.example"),
        ("user@例え.テスト", "xn--r8jz45g.xn--zckzah"),
    ],
)
def test_normalize_address_idn_domain_is_lower_case_ascii(address: str, domain: str) -> None:
    result = normalize_address(address)
    assert result.rpartition("@")[2] == domain
    assert result.isascii()


def test_normalize_address_domain_is_lower_cased() -> None:
    result = normalize_address("Someone@Example.COM")
    assert result.rpartition("@")[2] == "example.com"
    assert result.lower() == "someone@example.com"


def test_normalize_address_allows_utf8_local_part() -> None:
    assert normalize_address("jöhn@example.com") == "jöhn@example.com"


@pytest.mark.parametrize(
    "address",
    [
        "",
        "   ",
        "plainaddress",
        "@example.com",
        "user@",
        "user@@example.com",
        "user@exa mple.com",
        "us er@example.com",
        "user@example..com",
        "<user@example.com>",
        "Name <user@example.com>",
        "user@example.com>",
        "<user@example.com",
        "user@example.com, other@example.com",
        "user@-example.com",
        "user@example.com\r\nBcc: victim@example.com",
        "user@example.com\n",
        "user@example.com\r",
        "user@example.com\x00",
        "\x00user@example.com",
    ],
)
def test_normalize_address_invalid(address: str) -> None:
    with pytest.raises(ValueError):
        normalize_address(address)


# --- parse_mailbox --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("user@example.com", ("", "user@example.com")),
        ("<user@example.com>", ("", "user@example.com")),
        ("Jane Doe <jane@example.com>", ("Jane Doe", "jane@example.com")),
        ('"Doe, Jane" <jane@Example.COM>', ("Doe, Jane", "jane@example.com")),
        ("Zoë Ålund <zoe@example.com>", ("Zoë Ålund", "zoe@example.com")),
        ("Ops <ops@Bücher.example>", ("Ops", "ops@xn--bcher-kva.example")),
        ("  Support   <support@example.com>  ", ("Support", "support@example.com")),
        ("billing@example.com (Billing)", ("Billing", "billing@example.com")),
        ('"a<b>c" <abc@example.com>', ("a<b>c", "abc@example.com")),
        ('"say \\"<hi>\\"" <hi@example.com>', ('say "<hi>"', "hi@example.com")),
    ],
)
def test_parse_mailbox_valid(value: str, expected: tuple[str, str]) -> None:
    assert parse_mailbox(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "Jane Doe",
        "Jane <>",
        "a@example.com, b@example.com",
        "a@example.com; b@example.com",
        "a@example.com b@example.com",
        "Jane <a@example.com> <b@example.com>",
        "Jane <a@example.com>, Bob <b@example.com>",
        "alice@example.org)<bob@example.org>",
        "a@b@example.com",
        "Jane <not-an-address>",
        "Jane <a@example.com>\r\nBcc: victim@example.com",
        "Jane\n<a@example.com>",
        "Jane <a@example.com>\x00",
        "Jane\r <a@example.com>",
        "<a@example.com",
        "a@example.com>",
        "Jane <a@example.com",
        "Jane a@example.com>",
        "Jane >a@example.com<",
        "Jane <<a@example.com>>",
    ],
)
def test_parse_mailbox_invalid(value: str) -> None:
    with pytest.raises(ValueError):
        parse_mailbox(value)


# --- check_header_text ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["", "Hello", "Grüße aus München", "tab\tseparated", "x" * 2000, "🙂 emoji"]
)
def test_check_header_text_accepts_single_line_text(value: str) -> None:
    check_header_text(value)


@pytest.mark.parametrize("breaker", [*LINE_BREAKS, "\x00", "\x01", "\x1b", "\x7f"])
def test_check_header_text_refuses_line_breaks_and_controls(breaker: str) -> None:
    with pytest.raises(ValueError):
        check_header_text(f"Subject{breaker}Bcc: victim@example.com")


# --- check_custom_header --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X-Campaign", "spring-sale"),
        ("X-Entity-Ref-ID", "12345"),
        ("List-Unsubscribe", "<https://example.com/unsubscribe?u=1>, <mailto:u@example.com>"),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
        ("In-Reply-To", "<previous@example.com>"),
        ("References", "<a@example.com> <b@example.com>"),
        ("X-Priority", "1"),
        ("X-Empty", ""),
        ("X-Long", "v" * MAX_HEADER_VALUE),
        ("X-Unicode", "Grüße"),
    ],
)
def test_check_custom_header_accepts(name: str, value: str) -> None:
    check_custom_header(name, value)


STRUCTURAL = [
    "Bcc",
    "Cc",
    "To",
    "From",
    "Sender",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "Return-Path",
    "Received",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Content-Disposition",
    "DKIM-Signature",
    "Delivered-To",
]


@pytest.mark.parametrize("name", STRUCTURAL)
@pytest.mark.parametrize("spelling", [str.lower, str.upper, str.title, str.swapcase, str])
def test_check_custom_header_refuses_structural_headers(
    name: str, spelling: Callable[[str], str]
) -> None:
    with pytest.raises(ValueError, match="set by Postline"):
        check_custom_header(spelling(name), "value")


def test_structural_header_list_covers_the_dangerous_ones() -> None:
    assert {name.lower() for name in STRUCTURAL} <= STRUCTURAL_HEADERS
    assert {"bcc", "message-id", "from", "to", "dkim-signature"} <= STRUCTURAL_HEADERS


@pytest.mark.parametrize(
    "name",
    [
        "",
        "X Campaign",
        "X-Campaign:",
        "Bcc:",
        "X:Injected",
        " X-Campaign",
        "X-Campaign ",
        "X-Tab\tName",
        "X-Ümlaut",
        "X-New\r\nBcc",
        "X-Null\x00",
        "X-" + "a" * 80,
    ],
)
def test_check_custom_header_refuses_invalid_names(name: str) -> None:
    with pytest.raises(ValueError, match="not a valid header field name"):
        check_custom_header(name, "value")


@pytest.mark.parametrize(
    "value",
    [
        "ok\r\nBcc: victim@example.com",
        "ok\nBcc: victim@example.com",
        "ok\rBcc: victim@example.com",
        "ok\x00",
        "ok\u2028Bcc: victim@example.com",
        "ok\x0bBcc: victim@example.com",
    ],
)
def test_check_custom_header_refuses_injection_in_values(value: str) -> None:
    with pytest.raises(ValueError):
        check_custom_header("X-Campaign", value)


def test_check_custom_header_refuses_over_long_values() -> None:
    check_custom_header("X-Long", "v" * MAX_HEADER_VALUE)
    with pytest.raises(ValueError, match="longer than"):
        check_custom_header("X-Long", "v" * (MAX_HEADER_VALUE + 1))


# --- properties -----------------------------------------------------------------------------

with_line_break = st.tuples(st.text(), st.sampled_from(["\r", "\n", "\r\n"]), st.text()).map(
    "".join
)


@given(with_line_break)
def test_no_text_with_cr_or_lf_passes_check_header_text(value: str) -> None:
    with pytest.raises(ValueError):
        check_header_text(value)


@given(with_line_break)
def test_no_text_with_cr_or_lf_passes_parse_mailbox(value: str) -> None:
    with pytest.raises(ValueError):
        parse_mailbox(value)


@given(
    st.sampled_from(["jane@example.com", "Jane <jane@example.com>", "<a@b.example>"]),
    st.integers(min_value=0, max_value=30),
    st.sampled_from(["\r", "\n", "\r\n", "\x00"]),
)
def test_valid_mailbox_with_break_anywhere_is_refused(base: str, index: int, brk: str) -> None:
    position = min(index, len(base))
    with pytest.raises(ValueError):
        parse_mailbox(base[:position] + brk + base[position:])


@given(st.text(max_size=200))
def test_accepted_header_text_is_one_line(value: str) -> None:
    try:
        check_header_text(value)
    except ValueError:
        return
    assert len(value.splitlines()) <= 1
    assert "\r" not in value
    assert "\n" not in value


@given(st.text(max_size=80))
def test_accepted_mailbox_address_is_one_line(value: str) -> None:
    try:
        name, address = parse_mailbox(value)
    except ValueError:
        return
    assert "\r" not in name + address
    assert "\n" not in name + address
    assert address.count("@") == 1
    assert address == normalize_address(address)


@pytest.mark.parametrize(
    "name",
    [
        "Resent-Bcc",
        "resent-to",
        "ARC-Seal",
        "Authentication-Results",
        "received-spf",
        "X-Original-To",
        "X-Received",
    ],
)
def test_trace_and_resent_headers_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match=f"header '{name}' .*cannot be given"):
        check_custom_header(name, "x@example.test")


@pytest.mark.parametrize("content_type", ["multipart/mixed", "MESSAGE/rfc822", "message/partial"])
def test_structural_attachment_types_are_refused(content_type: str) -> None:
    with pytest.raises(ValueError, match="structural MIME type"):
        check_attachment_type(content_type)
    check_attachment_type("application/pdf")


# --- what one send request may ask for (check_request_limits) -----------------------------

LIMITS = SubmissionLimits(
    recipients_per_request=5,
    custom_headers=2,
    custom_header_bytes=40,
    attachments=1,
    message_bytes=30,
)


def _email(**fields: Any) -> dict[str, Any]:
    return {"from": "a@example.test", "to": "b@dest.test"} | fields


def test_request_limits_count_every_recipient_of_every_email() -> None:
    emails = [_email(to=["1@d.test", "2@d.test"], cc="3@d.test"), _email(bcc=["4@d.test"])]
    assert check_request_limits(emails, LIMITS, batch=True) == 5
    emails.append(_email())
    with pytest.raises(OverLimit) as raised:
        check_request_limits(emails, LIMITS, batch=True)
    assert raised.value.status == 422
    assert "6 recipients" in raised.value.message
    assert "POSTLINE_MAX_RECIPIENTS_PER_REQUEST" in raised.value.message


def test_request_limits_ignore_shapes_that_validation_refuses() -> None:
    """Counting only: a wrong shape is validation's to refuse, with its own message."""
    emails: list[Any] = [None, "x", _email(to=7, headers=[1], attachments="no")]
    assert check_request_limits(emails, LIMITS, batch=True) == 0


@pytest.mark.parametrize(
    ("fields", "status", "field"),
    [
        ({"headers": {"X-A": "1", "X-B": "2", "X-C": "3"}}, 422, "[0].headers"),
        ({"headers": {"X-A": "v" * 40}}, 422, "[0].headers"),
        ({"attachments": [{"content": "QQ=="}, {"content": "QQ=="}]}, 422, "[0].attachments"),
        ({"attachments": [{"content": "QUJD" * 11}]}, 413, "[0].attachments"),
    ],
)
def test_request_limits_on_headers_and_attachments(
    fields: dict[str, Any], status: int, field: str
) -> None:
    with pytest.raises(OverLimit) as raised:
        check_request_limits([_email(**fields)], LIMITS, batch=True)
    assert (raised.value.status, raised.value.field) == (status, field)


def test_request_limits_at_their_edges_pass() -> None:
    # 2 headers of "X-A: " + 15 + CRLF = 22 and 18 bytes: 40 together, the limit.
    fields = {
        "headers": {"X-A": "v" * 15, "X-B": "v" * 11},
        "attachments": [{"content": "QUJD" * 10}],
    }
    assert check_request_limits([_email(**fields)], LIMITS, batch=False) == 1
