"""Reading the parts of an untrusted report: field blocks, body text, the enclosed original.

Everything here tolerates what real receivers send: the lenient ``compat32`` parser,
charsets that lie, base64 where none is expected, HTML-only bodies. Nothing raises on
bad input; a part that cannot be read is an empty one.
"""

from __future__ import annotations

import html
import re
from email import policy
from email.message import Message
from email.parser import BytesParser, HeaderParser
from email.utils import getaddresses

#: Text read from a body: a report's useful lines are at its top.
MAX_TEXT = 64 * 1024
_ADDRESS = re.compile(r"[^\s<>()\[\]\"',;:]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")
_TAG = re.compile(r"<(?:br|/p|/div|/tr|/li|p|div)\b[^>]*>", re.IGNORECASE)
_ANY_TAG = re.compile(r"<[^>]*>")
_STYLE = re.compile(r"<(style|script)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)


def parse_message(raw: bytes) -> Message:
    return BytesParser(policy=policy.compat32).parsebytes(raw)


def header(message: Message, name: str) -> str | None:
    """A header's value as one line of text, or None."""
    value = message.get(name)
    if value is None:
        return None
    return " ".join(str(value).split()) or None


def addresses_in(text: str) -> list[str]:
    """Every address in ``text``, lower-cased, in order, without repeats."""
    found: list[str] = []
    for match in _ADDRESS.finditer(text):
        address = match.group(0).strip(".").lower()
        if address not in found:
            found.append(address)
    return found


def typed_address(value: str | None) -> str | None:
    """The address of an RFC 3464 / 5965 field ``rfc822; user@host`` (or a bare one)."""
    if not value:
        return None
    _, _, address = value.rpartition(";")
    found = addresses_in(address)
    return found[0] if found else None


def header_addresses(message: Message, name: str) -> list[str]:
    values = [str(v) for v in message.get_all(name, [])]
    return [address.lower() for _, address in getaddresses(values) if "@" in address]


def decoded_text(part: Message) -> str:
    """A leaf part's payload as text, transfer encoding and charset undone, bounded."""
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        raw = part.get_payload()
        return raw[:MAX_TEXT] if isinstance(raw, str) else ""
    charset = part.get_content_charset() or "utf-8"
    try:
        text = payload[:MAX_TEXT].decode(charset, errors="replace")
    except LookupError:  # a charset Python does not know
        text = payload[:MAX_TEXT].decode("utf-8", errors="replace")
    return text


def html_to_text(markup: str) -> str:
    text = _STYLE.sub(" ", markup)
    text = _TAG.sub("\n", text)
    return html.unescape(_ANY_TAG.sub(" ", text))


def body_text(message: Message) -> str:
    """The human-readable text of a report: its plain-text parts, else its HTML ones as
    text. Enclosed messages (the original) are not read: their text is not the report's."""
    plain: list[str] = []
    markup: list[str] = []
    for part in _leaves(message):
        kind = part.get_content_type()
        if kind == "text/plain":
            plain.append(decoded_text(part))
        elif kind == "text/html":
            markup.append(html_to_text(decoded_text(part)))
    return "\n".join(plain or markup)[:MAX_TEXT]


def _leaves(message: Message) -> list[Message]:
    if message.is_multipart():
        leaves: list[Message] = []
        for part in message.get_payload():
            if isinstance(part, Message) and part.get_content_maintype() != "message":
                leaves += _leaves(part)
        return leaves
    return [message]


def parts_of_type(message: Message, *kinds: str) -> list[Message]:
    return [part for part in message.walk() if part.get_content_type() in kinds]


def field_blocks(part: Message) -> list[Message]:
    """The header-like blocks of a ``message/delivery-status`` or ``feedback-report``
    part: the parser splits some into messages, leaves others as one text."""
    payload = part.get_payload()
    if isinstance(payload, list) and all(isinstance(p, Message) for p in payload):
        return [p for p in payload if isinstance(p, Message) and len(p.keys())]
    text = decoded_text(part).replace("\r\n", "\n")
    return [
        block
        for chunk in re.split(r"\n[ \t]*\n", text)
        if len((block := HeaderParser(policy=policy.compat32).parsestr(chunk.strip())).keys())
    ]


def enclosed_original(message: Message) -> Message | None:
    """The original message (or its headers) a report encloses, if it does."""
    for part in parts_of_type(message, "message/rfc822", "text/rfc822-headers"):
        if part.get_content_type() == "message/rfc822":
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                return payload[0]
            continue
        return HeaderParser(policy=policy.compat32).parsestr(decoded_text(part))
    return None
