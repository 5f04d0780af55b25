"""Complaints: RFC 5965 feedback reports (ARF), as the mailbox providers' loops send them.

- Yahoo's complaint feedback loop (CFL): ARF, ``User-Agent: Yahoo!-Mail-Feedback``, with
  the recipient often redacted: the one-recipient email (or the return path) finds it.
- Microsoft's JMRP: ARF with the original attached, naming the recipient in its
  ``X-HmXmrOriginalRecipient`` header; its older form is the original alone, attached
  to a short note, with that same header. Both are read.
- Anything else that follows RFC 5965.

Only ``Feedback-Type: abuse`` is a complaint; other types (fraud, virus, not-spam,
auth-failure) are parsed, and stored as reports Postline does not act on.
"""

from __future__ import annotations

from email.message import Message

from postline.inbound.mime import (
    enclosed_original,
    field_blocks,
    header,
    header_addresses,
    parts_of_type,
    typed_address,
)
from postline.inbound.report import Entry, Kind, Report

#: Microsoft's header naming the complaining mailbox in the enclosed original.
MICROSOFT_RECIPIENT = "X-HmXmrOriginalRecipient"


def _complainants(fields: Message | None, original: Message | None) -> list[str]:
    """The addresses the report names, surest first: the report's own field, then
    Microsoft's header; the original's To only when nothing else names anyone."""
    found: list[str] = []
    if fields is not None:
        for value in fields.get_all("Original-Rcpt-To", []):
            address = typed_address(str(value))
            if address is not None:
                found.append(address)
    if original is not None:
        found += header_addresses(original, MICROSOFT_RECIPIENT)
        if not found:
            found += header_addresses(original, "To")
    return list(dict.fromkeys(found))


def parse_arf(message: Message) -> Report | None:
    """The complaint, or None when the message is no feedback report."""
    parts = parts_of_type(message, "message/feedback-report")
    original = enclosed_original(message)
    if parts:
        blocks = field_blocks(parts[0])
        fields = blocks[0] if blocks else None
        shape = "arf"
    elif original is not None and original.get(MICROSOFT_RECIPIENT) is not None:
        fields, shape = None, "jmrp"
    else:
        return None
    feedback_type = (header(fields, "Feedback-Type") if fields is not None else None) or "abuse"
    return_path = header(fields, "Original-Mail-From") if fields is not None else None
    if return_path is None and original is not None:
        return_path = header(original, "Return-Path")
    entry = Entry(
        addresses=tuple(_complainants(fields, original)),
        action="complaint",
        diagnostic=f"complaint (feedback-type {feedback_type.lower()})",
    )
    return Report(
        kind=Kind.COMPLAINT,
        shape=shape,
        entries=(entry,),
        original_return_path=return_path,
        original_message_id=header(original, "Message-ID") if original is not None else None,
        feedback_type=feedback_type.lower(),
        user_agent=header(fields, "User-Agent") if fields is not None else None,
    )
