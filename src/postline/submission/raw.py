"""A message given whole, as a submission: what the submission port does with DATA,
and ``POST /v1/emails/raw`` with its decoded ``raw``. One path, so both keep the
same bytes, refuse the same messages and add the same fields."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from postline.accept import Recipient, Submission
from postline.message import Content
from postline.model import EmailSource
from postline.submission.headers import HeaderError, added_fields, has_bare_lf, read_headers

#: Why a message with a bare LF is refused (RFC 5321 2.3.8; ``has_bare_lf``).
BARE_LF = "Bare LF in the message: every line must end with CRLF"


def check_raw(raw: bytes) -> None:
    """HeaderError when the message cannot be kept as it is (bare LF)."""
    if has_bare_lf(raw):
        raise HeaderError(BARE_LF)


def raw_submission(
    raw: bytes, recipients: Sequence[str], source: EmailSource, now: datetime
) -> Submission:
    """The message exactly as given, with at most a ``Date`` (and, from the acceptor,
    a ``Message-ID``) in front; each envelope recipient's kind read from To and Cc
    (one in neither is a ``bcc``). HeaderError when it cannot be accepted as it is.

    The caller checks that the key may send from ``content.from_address`` (the From
    header's) before it spends anything on it; the acceptor checks it again.
    """
    check_raw(raw)
    headers = read_headers(raw)
    to, cc = set(headers.to), set(headers.cc)
    kinds = [Recipient(a, "to" if a in to else "cc" if a in cc else "bcc") for a in recipients]
    return Submission(
        content=Content(
            from_name=headers.from_name,
            from_address=headers.from_address,
            to=[r.address for r in kinds if r.kind == "to"],
            cc=[r.address for r in kinds if r.kind == "cc"],
            subject=headers.subject,
        ),
        recipients=kinds,
        source=source,
        raw=added_fields(headers, now) + raw,
        message_id=headers.message_id,
    )
