"""What the submission port reads from a message's header block, and what it refuses."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from postline.submission.headers import (
    HeaderError,
    added_fields,
    has_bare_lf,
    read_headers,
)


def test_the_fields_the_record_needs() -> None:
    headers = read_headers(
        b"From: =?utf-8?q?Caf=C3=A9?= <Shop@Example.TEST>\r\n"
        b"To: a@dest.test, B <b@Dest.test>\r\nCc: c@dest.test\r\n"
        b"Subject: =?utf-8?q?Commande_exp=C3=A9di=C3=A9e?=\r\n"
        b"Message-ID:\r\n <id-1@shop.test>\r\nDate: Sun, 6 Dec 2026 03:00:00 +0000\r\n"
        b"\r\nFrom: not-a-header@body.test\r\n"
    )
    assert headers.from_address == "shop@example.test"
    assert headers.subject == "Commande expédiée"
    assert headers.to == ["a@dest.test", "b@dest.test"] and headers.cc == ["c@dest.test"]
    assert headers.message_id == "<id-1@shop.test>"
    assert headers.has_date
    assert added_fields(headers, datetime(2026, 12, 6, tzinfo=UTC)) == b""


def test_a_missing_date_is_added_and_a_missing_message_id_left_to_the_acceptor() -> None:
    headers = read_headers(b"From: a@example.test\r\n\r\nbody\r\n")
    assert headers.message_id is None and not headers.has_date
    added = added_fields(headers, datetime(2026, 12, 6, 3, 0, tzinfo=UTC))
    assert added == b"Date: Sun, 06 Dec 2026 03:00:00 +0000\r\n"


@pytest.mark.parametrize(
    "raw",
    [
        b"To: a@dest.test\r\n\r\nno From\r\n",
        b"From: a@example.test\r\nFrom: b@example.test\r\n\r\n",
        b"From: a@example.test, b@example.test\r\n\r\n",
        b"From: not an address\r\n\r\n",
        b"From: a@example.test\r\nMessage-ID: nonsense\r\n\r\n",
        b"\r\nFrom: a@example.test\r\n",
    ],
)
def test_refused(raw: bytes) -> None:
    with pytest.raises(HeaderError):
        read_headers(raw)


def test_bare_lf() -> None:
    assert not has_bare_lf(b"a\r\nb\r\n")
    assert has_bare_lf(b"a\r\nb\nc\r\n")
    assert has_bare_lf(b"\n")
