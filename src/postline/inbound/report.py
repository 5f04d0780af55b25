"""What a report mailed to the return path says, whatever shape it came in.

The parsers (``dsn``, ``textbounce``, ``arf``) each turn one family of shapes into a
:class:`Report`; ``apply`` only ever reads this, so a new receiver's format is a new
parser and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    BOUNCE = "bounce"
    COMPLAINT = "complaint"


class Unparsed(Exception):
    """The message is no report Postline can read; ``str(exc)`` is the stored reason."""


@dataclass(frozen=True)
class Entry:
    """One recipient the report is about.

    ``addresses``: every address the report gives for it (Original-Recipient, then
    Final-Recipient; Original-Rcpt-To...), lower-cased; empty when the report does
    not say (Yahoo's redacted complaints), and a one-recipient email still matches.
    """

    addresses: tuple[str, ...]
    #: RFC 3464's Action, lower-cased: "failed" is a bounce, "delayed" only news;
    #: "complaint" for a feedback report.
    action: str
    status: str | None = None  # the RFC 3463 enhanced code the report gives
    smtp_code: int | None = None  # the remote reply's code, when the report quotes one
    diagnostic: str | None = None  # the remote reply's text (untrusted, cleaned by apply)


@dataclass(frozen=True)
class Report:
    kind: Kind
    #: Which parser read it ("rfc3464", "gmail", "exchange", "qmail", "arf", "jmrp").
    shape: str
    entries: tuple[Entry, ...]
    #: Ways to find the email when the envelope recipient does not name it (a complaint
    #: to the fbl@ address): the original's envelope sender and its Message-ID.
    original_return_path: str | None = None
    original_message_id: str | None = None
    feedback_type: str | None = None
    user_agent: str | None = None
