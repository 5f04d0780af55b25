"""The body as it goes on the wire after DATA: the fast path for bodies that need nothing
must give what aiosmtplib's own normalization and dot-stuffing give, byte for byte."""

from __future__ import annotations

import re

from aiosmtplib.protocol import normalize_message_line_endings
from hypothesis import given
from hypothesis import strategies as st

from postline.delivery.pipelining import wire_content

_LEADING_DOT = re.compile(rb"(?m)^\.")


def reference(body: bytes) -> bytes:
    return _LEADING_DOT.sub(b"..", normalize_message_line_endings(body))


# Line endings, dots and a few letters: the characters the two rewrites care about.
bodies = st.lists(st.sampled_from([b"\r\n", b"\n", b"\r", b".", b"..", b"a", b"bc "])).map(b"".join)


@given(bodies)
def test_any_body_goes_out_as_the_full_rewrite_would_send_it(body: bytes) -> None:
    assert wire_content(body) == reference(body)


def test_a_composed_body_is_sent_as_it_is() -> None:
    body = b"Subject: hi\r\n\r\nline one\r\nline two\r\n"
    assert wire_content(body) is body


def test_a_line_starting_with_a_dot_is_stuffed_and_bare_endings_are_fixed() -> None:
    assert wire_content(b".top\r\nmid\n.end") == b"..top\r\nmid\r\n..end\r\n"
    assert wire_content(b"") == b"\r\n"
