"""A display name stays one display name however it is folded.

Python 3.11 to 3.13 drop the quotes of a quoted-string they fold (and write the
decoded text of an encoded word raw), so a long name with commas and angle brackets
went out as several From addresses, one of them chosen by the client.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.utils import getaddresses

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from postline.message import Content, build_message, build_message_stdlib
from postline.validation import parse_mailbox

DATE = datetime(2026, 12, 6, 1, 2, 3, tzinfo=UTC)
MESSAGE_ID = "<01jezq3v6k8d2c4m5n7p9r0s1t@mail.example.test>"
SPOOF = '"Accounts receivable department of Acme Holdings, <ceo@bank.example>, and friends"'
SPOOF_NAME = SPOOF.strip('"')
BUILDERS = [build_message, build_message_stdlib]


def field(raw: bytes, name: str) -> str:
    """The raw field's value, unfolded, as a reader sees it before parsing."""
    head = raw.split(b"\r\n\r\n", 1)[0].decode("utf-8")
    unfolded = head.replace("\r\n ", " ").replace("\r\n\t", "\t")
    prefix = name.lower() + ":"
    values = [
        line[len(prefix) :] for line in unfolded.split("\r\n") if line.lower().startswith(prefix)
    ]
    assert len(values) == 1
    return values[0].strip()


def rfc2047(name: str) -> str:
    return str(make_header(decode_header(name)))


def test_validation_accepts_the_name() -> None:
    assert parse_mailbox(f"{SPOOF} <billing@acme.example>") == (SPOOF_NAME, "billing@acme.example")


@pytest.mark.parametrize("builder", BUILDERS)
def test_a_quoted_name_with_addresses_in_it_stays_one_sender(builder: object) -> None:
    content = Content(SPOOF_NAME, "billing@acme.example", ["to@example.test"], text="hi")
    raw = builder(content, message_id=MESSAGE_ID, date=DATE)  # type: ignore[operator]
    assert all(len(line) <= 78 for line in raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n"))
    msg = message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    [sender] = msg["From"].addresses
    assert (sender.display_name, sender.addr_spec) == (SPOOF_NAME, "billing@acme.example")
    assert getaddresses([field(raw, "From")]) == [(SPOOF_NAME, "billing@acme.example")]


NAME_CHARS = st.sampled_from(
    [
        *list("aZ09 .,;:\"'()<>@[]\\=?_-!#%*/"),
        "=?",
        "?=",
        "ü",
        "—",
        "東",
        "🎉",
        "x" * 30,
        " <ceo@bank.example>, ",
    ]
)
NAME = (
    st.lists(NAME_CHARS, min_size=1, max_size=60)
    .map("".join)
    .map(lambda text: " ".join(text.split(" ")).strip())
    .filter(bool)
)
ADDRESS = st.from_regex(
    r"[a-z0-9_+-]{1,20}(\.[a-z0-9_+-]{1,12}){0,2}@[a-z0-9-]{1,20}\.[a-z]{2,6}", fullmatch=True
)


@settings(max_examples=200, deadline=None)
@example(build_message, SPOOF_NAME, "billing@acme.example", ["to@example.test"], [], [])
@example(build_message_stdlib, "Zoë " + SPOOF_NAME, "billing@acme.example", ["t@x.test"], [], [])
@example(
    build_message_stdlib,
    "=?utf-8?q?a=2C_=3Cceo=40bank=2Eexample=3E?=",
    "b@a.test",
    ["t@x.test"],
    [],
    [],
)
@given(
    builder=st.sampled_from(BUILDERS),
    name=NAME,
    address=ADDRESS,
    to=st.lists(ADDRESS, min_size=1, max_size=5),
    cc=st.lists(ADDRESS, max_size=3),
    reply_to=st.lists(ADDRESS, max_size=2),
)
def test_address_fields_parse_back_to_what_was_meant(
    builder: object,
    name: str,
    address: str,
    to: list[str],
    cc: list[str],
    reply_to: list[str],
) -> None:
    content = Content(name, address, to, cc, reply_to, text="hi")
    raw = builder(content, message_id=MESSAGE_ID, date=DATE)  # type: ignore[operator]
    msg = message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    [sender] = msg["From"].addresses
    assert sender.addr_spec == address
    # Python's own parser keeps the white space between two encoded words (RFC 2047
    # 6.2 drops it); the RFC 2047 decoder below reads the name back exactly.
    assert "".join(sender.display_name.split()) == "".join(name.split())
    [(read_name, read_address)] = getaddresses([field(raw, "From")])
    assert (rfc2047(read_name), read_address) == (name, address)
    for header, sent in (("To", to), ("Cc", cc), ("Reply-To", reply_to)):
        if sent:
            assert [a.addr_spec for a in msg[header].addresses] == sent
            assert getaddresses([field(raw, header)]) == [("", a) for a in sent]
        else:
            assert msg[header] is None
