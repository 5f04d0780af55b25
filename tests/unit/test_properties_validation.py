"""Properties of address and header validation on arbitrary input (validation.py, schemas.py).

test_validation.py holds the examples and the line-break properties of
``check_header_text`` and ``parse_mailbox``. Here: every validator fails only
with ``ValueError`` (the API turns that into a 422; anything else would be a
500), whatever the text, lone surrogates included; accepted addresses are a
fixed point of normalisation and survive a trip through a ``From:`` header; a
display name can never change the address; and a custom header that passes
the check cannot add a line, or another header, to the message that is built.
"""

from __future__ import annotations

import contextlib
import string
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.utils import formataddr

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from postline.api.schemas import EmailIn
from postline.domains import DomainError, normalize_domain
from postline.message import Content, build_message
from postline.validation import (
    _BARE_ADDRESS,
    _parse_header_mailbox,
    check_custom_header,
    check_header_text,
    normalize_address,
    parse_mailbox,
)
from tests.harness.inputs import LINE_BREAKS

PROPERTIES = settings(derandomize=True, deadline=None, max_examples=300)

#: Any text at all, lone surrogates included (JSON can carry them: "\ud800").
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=80)
#: Text made of the characters that matter to address and header parsers.
ADDRESSY = st.text(
    st.sampled_from(list("aZ09.-_+'@<>\"(),;:[]\\ \t\r\n\x00\x0b\x85\u2028é例")), max_size=40
)
# The "X-" headers a client may set; any name matching this regex is not structural.
HEADER_NAME = st.from_regex(r"X-[!-9;-~]{1,40}", fullmatch=True)
HEADER_VALUE = st.text(st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp")), max_size=200)
#: Something that almost passes a token check ("text/plain", "kind"), then a line break.
TOKEN = st.tuples(
    st.sampled_from(["text/plain", "kind", "example.test", "a.b.test"]),
    st.sampled_from(["", *LINE_BREAKS, " ", "\t"]),
).map("".join)
SIMPLE_NAME = st.text(string.ascii_letters + string.digits + " .,'-()<>@;:\"\\", max_size=30)


def ok_or_value_error(check: object, *args: str) -> None:
    assert callable(check)
    with contextlib.suppress(ValueError):
        check(*args)


#: Bare addresses, valid or not: a local part of atom characters and dots, an at sign,
#: a domain of letters, digits, dots and hyphens (empty labels, no dot, and so on).
_LOCAL_PIECES = [*"aZ09.-_+'!#$%&*/=?^`{|}~", "..", "o"]
_DOMAIN_PIECES = [*"aZ09.-", "..", "test", "example", ".test"]
BARE = st.tuples(
    st.lists(st.sampled_from(_LOCAL_PIECES), min_size=1, max_size=12).map("".join),
    st.lists(st.sampled_from(_DOMAIN_PIECES), min_size=1, max_size=8).map("".join),
).map("@".join)


def _outcome(parse: object, value: str) -> tuple[str, str] | str:
    assert callable(parse)
    try:
        found = parse(value)
    except ValueError as exc:
        return f"ValueError: {exc}"
    assert isinstance(found, tuple)
    return found


@PROPERTIES
@given(st.one_of(BARE, st.emails(), ADDRESSY))
def test_a_bare_address_is_parsed_as_the_header_parsers_would(value: str) -> None:
    """The shortcut for a bare ``local@domain`` gives what the header parsers give, the
    same mailbox or the same refusal."""
    if _BARE_ADDRESS.fullmatch(value):
        assert _outcome(parse_mailbox.__wrapped__, value) == _outcome(_parse_header_mailbox, value)


@PROPERTIES
@given(st.one_of(ANY_TEXT, ADDRESSY))
def test_address_validators_raise_only_value_error(text: str) -> None:
    ok_or_value_error(normalize_address, text)
    ok_or_value_error(parse_mailbox, text)
    ok_or_value_error(check_header_text, text)


@PROPERTIES
@given(st.one_of(ANY_TEXT, HEADER_NAME), st.one_of(ANY_TEXT, HEADER_VALUE))
def test_header_check_raises_only_value_error(name: str, value: str) -> None:
    ok_or_value_error(check_custom_header, name, value)


@PROPERTIES
@given(st.one_of(ANY_TEXT, ADDRESSY))
def test_accepted_address_is_a_fixed_point(text: str) -> None:
    try:
        address = normalize_address(text)
    except ValueError:
        return
    assert normalize_address(address) == address
    assert parse_mailbox(address) == ("", address)
    assert parse_mailbox(f"<{address}>") == ("", address)
    assert address == address.strip()
    assert address.count("@") == 1


@PROPERTIES
@given(st.emails())
def test_ordinary_addresses_are_accepted_and_only_lower_cased(address: str) -> None:
    assert normalize_address(address) == address.lower()
    assert normalize_address(address.upper()) == address.lower()


@PROPERTIES
@given(SIMPLE_NAME, st.emails())
def test_display_name_never_changes_the_address(name: str, address: str) -> None:
    # A name such as 'Bob <evil@attacker.test>' is quoted by formataddr; the address
    # that counts is still the one in the last angle brackets.
    header = formataddr((name, address))
    parsed_name, parsed_address = parse_mailbox(header)
    assert parsed_address == address.lower()
    if name == name.strip() and '"' not in name and "\\" not in name:
        assert parsed_name == name


@PROPERTIES
@given(HEADER_NAME, HEADER_VALUE, st.integers(min_value=0), st.sampled_from(LINE_BREAKS))
def test_a_line_break_anywhere_in_a_header_is_refused(
    name: str, value: str, position: int, brk: str
) -> None:
    at = position % (len(value) + 1)
    with pytest.raises(ValueError):
        check_custom_header(name, value[:at] + brk + value[at:])
    at = position % (len(name) + 1)
    with pytest.raises(ValueError):
        check_custom_header(name[:at] + brk + name[at:], value)


@PROPERTIES
@given(st.one_of(ANY_TEXT, HEADER_NAME), st.one_of(ANY_TEXT, HEADER_VALUE))
def test_accepted_header_is_one_line_with_one_colon_before_the_value(name: str, value: str) -> None:
    try:
        check_custom_header(name, value)
    except ValueError:
        return
    line = f"{name}: {value}"
    assert len(line.splitlines()) == 1
    assert line.index(":") == len(name)
    assert name.isascii() and name.isprintable() and " " not in name


BASE_HEADERS = {"from", "to", "subject", "date", "message-id", "mime-version"}
BASE_HEADERS |= {"content-type", "content-transfer-encoding"}


@settings(PROPERTIES, max_examples=150)
@given(st.dictionaries(HEADER_NAME, HEADER_VALUE, max_size=3))
def test_accepted_headers_appear_as_given_in_the_built_message(headers: dict[str, str]) -> None:
    for name, value in headers.items():
        check_custom_header(name, value)
    content = Content(
        from_name="Sender",
        from_address="sender@example.test",
        to=["rcpt@dest.test"],
        subject="Hello",
        text="Hi",
        headers=headers,
    )
    raw = build_message(
        content, message_id="<p@example.test>", date=datetime(2025, 1, 1, tzinfo=UTC)
    )
    message = message_from_bytes(raw, policy=policy.default)
    names = [name.lower() for name in message]
    assert set(names) == BASE_HEADERS | {name.lower() for name in headers}
    for name, value in headers.items():
        # {"X-A": .., "x-a": ..} are two fields of one name, as RFC 5322 allows for X- fields.
        same = [v for n, v in headers.items() if n.lower() == name.lower()]
        assert names.count(name.lower()) == len(same)
        found = [" ".join(str(v).split()) for v in message.get_all(name, [])]
        assert " ".join(value.split()) in found
    assert message["Bcc"] is None


VALID_EMAIL = {
    "from": "Sender <sender@example.test>",
    "to": "rcpt@dest.test",
    "subject": "Hello",
    "text": "Hi",
}
#: Each field of an email that ends up in a header line, with a valid value for it.
HEADER_FIELDS = {
    "from": "Sender <sender@example.test>",
    "subject": "Hello there",
    "header name": "X-Campaign",
    "header value": "spring sale",
    "filename": "report.pdf",
    "content_type": "application/pdf",
    "tag name": "kind",
}


def email_with(field: str, value: str) -> dict[str, object]:
    body: dict[str, object] = dict(VALID_EMAIL)
    attachment = {"filename": "report.pdf", "content": "", "content_type": "application/pdf"}
    if field in ("from", "subject"):
        body[field] = value
    elif field == "header name":
        body["headers"] = {value: "spring sale"}
    elif field == "header value":
        body["headers"] = {"X-Campaign": value}
    elif field == "tag name":
        body["tags"] = {value: "welcome"}
    else:
        body["attachments"] = [{**attachment, field: value}]
    return body


def test_the_valid_email_and_its_fields_are_valid() -> None:
    for field, value in HEADER_FIELDS.items():
        EmailIn.model_validate(email_with(field, value))


@PROPERTIES
@given(
    st.sampled_from(sorted(HEADER_FIELDS)), st.integers(min_value=0), st.sampled_from(LINE_BREAKS)
)
def test_email_model_refuses_a_line_break_in_any_header_field(
    field: str, position: int, brk: str
) -> None:
    # Anywhere, the very end included: "text/plain\n" once ended a MIME part early.
    valid = HEADER_FIELDS[field]
    at = position % (len(valid) + 1)
    with pytest.raises(ValidationError):
        EmailIn.model_validate(email_with(field, valid[:at] + brk + valid[at:]))


@settings(PROPERTIES, max_examples=150)
@given(st.sampled_from(sorted(HEADER_FIELDS)), ANY_TEXT)
def test_email_model_lets_no_line_break_into_a_header(field: str, value: str) -> None:
    try:
        email = EmailIn.model_validate(email_with(field, value))
    except ValidationError:
        return
    header_text = [email.from_, email.subject or "", *email.tags]
    header_text += [f"{name}: {value}" for name, value in email.headers.items()]
    header_text += [a.filename for a in email.attachments]
    header_text += [a.content_type for a in email.attachments]
    for text in header_text:
        assert len(text.splitlines()) <= 1, text
        assert not any(ch in text for ch in "\r\n\x00")


DOMAIN = "mail.example.test"


@PROPERTIES
@given(st.integers(min_value=1, max_value=len(DOMAIN) - 1), st.sampled_from([*LINE_BREAKS, " "]))
def test_domain_name_with_a_break_inside_is_refused(at: int, brk: str) -> None:
    # Around the name it is only surrounding whitespace, which is stripped.
    with pytest.raises(DomainError):
        normalize_domain(DOMAIN[:at] + brk + DOMAIN[at:])


@PROPERTIES
@given(st.one_of(ANY_TEXT, ADDRESSY, TOKEN))
def test_accepted_domain_name_is_plain_ascii_dns(name: str) -> None:
    try:
        domain = normalize_domain(name)
    except DomainError:
        return
    except ValueError as exc:  # DomainError is the documented one
        raise AssertionError(f"{name!r}: {exc!r}") from None
    assert domain.isascii() and domain == domain.lower()
    assert all(ch in string.ascii_lowercase + string.digits + "-." for ch in domain), domain
    assert normalize_domain(domain) == domain
