"""What the submission port reads from a message it keeps as received.

Only the header block is parsed, and only for what the email's record needs
(From, Subject, To and Cc for each recipient's kind) and for the two checks the
port makes (one From mailbox in a domain the key may use; a Message-ID). The
bytes themselves go to the spool unchanged; Postline adds at most a
``Message-ID`` and a ``Date`` in front of them (RFC 6409 8.2, 8.3), then its
DKIM signature.
"""

from __future__ import annotations

import contextlib
import email.policy
import re
from dataclasses import dataclass
from datetime import datetime
from email.header import decode_header, make_header
from email.parser import BytesHeaderParser
from email.utils import format_datetime, getaddresses

from postline.validation import normalize_address

#: The end of the header block: the first empty line.
_HEADER_END = re.compile(rb"\r\n\r\n|\A\r\n")
#: A line feed not preceded by a carriage return.
_BARE_LF = re.compile(rb"(?<!\r)\n")
_MESSAGE_ID = re.compile(r"<[^<>\s]+@[^<>\s]+>")


class HeaderError(ValueError):
    """The message cannot be accepted as it is; the text says why, for the SMTP reply."""


@dataclass(frozen=True)
class Headers:
    from_name: str
    from_address: str
    subject: str
    to: list[str]
    cc: list[str]
    message_id: str | None
    has_date: bool


def has_bare_lf(raw: bytes) -> bool:
    """RFC 5321 2.3.8: lines end with CRLF. A bare LF is how SMTP smuggling hides a
    second message, and DKIM over it signs what the next hop will rewrite."""
    return _BARE_LF.search(raw) is not None


def _block(raw: bytes) -> bytes:
    match = _HEADER_END.search(raw)
    return raw[: match.start() + 2] if match else raw


def _addresses(values: list[str]) -> list[str]:
    found = []
    for _, address in getaddresses(values):
        try:
            found.append(normalize_address(address))
        except ValueError:
            continue  # an unparseable To or Cc only costs the recipient its kind
    return found


def read_headers(raw: bytes) -> Headers:
    """The header fields the port needs; HeaderError when From is not one mailbox."""
    message = BytesHeaderParser(policy=email.policy.compat32).parsebytes(_block(raw))
    senders = [str(v) for v in message.get_all("From", [])]
    mailboxes = getaddresses(senders)
    if len(senders) != 1 or len(mailboxes) != 1 or not mailboxes[0][1]:
        raise HeaderError("the message needs exactly one From header with one address")
    name, address = mailboxes[0]
    try:
        from_address = normalize_address(address)
    except ValueError:
        raise HeaderError("the From header's address is not valid") from None
    ids = [str(v) for v in message.get_all("Message-ID", [])]
    message_id = None
    if ids:
        found = _MESSAGE_ID.search(ids[0])
        if len(ids) > 1 or found is None:
            raise HeaderError("the Message-ID header must be one <id@domain>")
        message_id = found.group(0)
    subject = str(message.get("Subject", "") or "")
    # An undecodable encoded-word is shown as written.
    with contextlib.suppress(ValueError, LookupError, UnicodeError):
        subject = str(make_header(decode_header(subject)))
    return Headers(
        from_name=name,
        from_address=from_address,
        subject=" ".join(subject.split()),
        to=_addresses([str(v) for v in message.get_all("To", [])]),
        cc=_addresses([str(v) for v in message.get_all("Cc", [])]),
        message_id=message_id,
        has_date=message.get("Date") is not None,
    )


def added_fields(headers: Headers, now: datetime) -> bytes:
    """The fields Postline puts in front of the message: a Date when it has none (the
    Message-ID, when missing, is added by the acceptor, which knows the email's id)."""
    return b"" if headers.has_date else f"Date: {format_datetime(now)}\r\n".encode()
