"""RFC 3464 delivery status notifications (and RFC 6533's global ones): the standard shape.

Gmail, Postfix, Exim, Microsoft 365 and most others send one ``multipart/report;
report-type=delivery-status`` with a block of fields per recipient; this is the most
reliable source, so it is read first and the text parsers only when it is absent.
"""

from __future__ import annotations

import re
from email.message import Message

from postline.inbound.mime import (
    enclosed_original,
    field_blocks,
    header,
    parts_of_type,
    typed_address,
)
from postline.inbound.report import Entry, Kind, Report

_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
_REPLY = re.compile(r"^\s*([2-5]\d\d)(?:[\s\-:]|$)")
STATUS_TYPES = ("message/delivery-status", "message/global-delivery-status")


def reply_code(text: str | None) -> int | None:
    """The SMTP code a diagnostic quotes (``smtp; 550 5.1.1 ...``), if it quotes one."""
    if not text:
        return None
    _, _, reply = text.partition(";") if ";" in text[:12] else ("", "", text)
    match = _REPLY.match(reply)
    return int(match.group(1)) if match else None


def diagnostic_text(value: str | None) -> str | None:
    """The diagnostic without its type (``smtp;``), as one line."""
    if not value:
        return None
    kind, found, rest = value.partition(";")
    text = rest if found and len(kind) < 12 else value
    return " ".join(text.split()) or None


def entry_of(block: Message) -> Entry | None:
    """One per-recipient block; None for a block that names no recipient."""
    addresses = [
        a
        for a in (
            typed_address(header(block, "Original-Recipient")),
            typed_address(header(block, "Final-Recipient")),
        )
        if a is not None
    ]
    if not addresses:
        return None
    status_field = header(block, "Status") or ""
    status = _STATUS.search(status_field)
    diagnostic = header(block, "Diagnostic-Code")
    return Entry(
        addresses=tuple(dict.fromkeys(addresses)),
        action=(header(block, "Action") or "failed").lower(),
        status=status.group(0) if status else None,
        smtp_code=reply_code(diagnostic),
        diagnostic=diagnostic_text(diagnostic),
    )


def parse_dsn(message: Message) -> Report | None:
    """The report, or None when the message has no delivery-status part."""
    parts = parts_of_type(message, *STATUS_TYPES)
    if not parts:
        return None
    blocks = field_blocks(parts[0])
    entries = tuple(e for b in blocks if (e := entry_of(b)) is not None)
    original = enclosed_original(message)
    return Report(
        kind=Kind.BOUNCE,
        shape="rfc3464",
        entries=entries,
        original_return_path=header(original, "Return-Path") if original is not None else None,
        original_message_id=header(original, "Message-ID") if original is not None else None,
    )
