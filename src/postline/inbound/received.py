"""What an ``email.received`` webhook says about a routed message: parsed once, when
it is stored, so a receiver needs no MIME parser for the common fields (and fetches
the raw bytes, ``GET /v1/inbound/{id}/raw``, for anything else)."""

from __future__ import annotations

from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesHeaderParser, BytesParser
from email.utils import getaddresses
from typing import Any

#: Text and HTML bodies beyond this many characters are cut (``truncated``: true): the
#: raw download has them whole, and a webhook body stays a size receivers accept.
MAX_BODY_CHARS = 256 * 1024
#: Headers a spam filter on the receiver's side looks at, by their lower-cased names.
SPAM_HEADERS = ("authentication-results", "received-spf", "arc-authentication-results")


def _text(value: object) -> str:
    return " ".join(str(value).replace("\x00", "").split())


def _addresses(message: Message, name: str) -> list[str]:
    values = [_text(v) for v in message.get_all(name, [])]
    return [address for _, address in getaddresses(values) if "@" in address]


def _body(message: EmailMessage, kind: str) -> tuple[str | None, bool]:
    part = message.get_body(preferencelist=(kind,))
    if part is None or part.get_content_type() != f"text/{kind}":
        return None, False
    try:
        content = str(part.get_content())
    except (LookupError, ValueError):  # an unknown charset: the bytes, readable as far as they go
        payload = part.get_payload(decode=True)
        content = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    # Lines as text has them (the wire's CRLF is the raw download's); no JSON store
    # keeps a NUL character.
    content = content.replace("\r\n", "\n").replace("\x00", "")
    return content[:MAX_BODY_CHARS], len(content) > MAX_BODY_CHARS


def _attachments(message: EmailMessage) -> list[dict[str, Any]]:
    found = []
    for part in message.iter_attachments():
        payload = part.get_payload(decode=True)
        found.append(
            {
                "filename": part.get_filename(),
                "content_type": part.get_content_type(),
                "content_id": part.get("Content-ID"),
                "size": len(payload) if isinstance(payload, bytes) else 0,
            }
        )
    return found


def spam_headers(message: Message) -> dict[str, Any]:
    """Authentication results, SPF, whether a DKIM signature is present, ``X-Spam-*``."""
    found: dict[str, Any] = {
        name: [_text(v) for v in message.get_all(name, [])] for name in SPAM_HEADERS
    }
    found["dkim_signature"] = message.get("DKIM-Signature") is not None
    found["x_spam"] = {
        key.lower(): _text(value)
        for key, value in message.items()
        if key.lower().startswith("x-spam-")
    }
    return found


def describe(raw: bytes) -> dict[str, Any]:
    """The parsed members of an ``email.received`` event's ``data``."""
    message = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    text, text_cut = _body(message, "plain")
    html, html_cut = _body(message, "html")
    from_ = _addresses(message, "From")
    return {
        "from": from_[0] if from_ else None,
        "from_header": _text(message.get("From", "")) or None,
        "to": _addresses(message, "To"),
        "cc": _addresses(message, "Cc"),
        "reply_to": _addresses(message, "Reply-To"),
        "subject": _text(message.get("Subject", "")) or None,
        "message_id": _text(message.get("Message-ID", "")) or None,
        "date": _text(message.get("Date", "")) or None,
        "text": text,
        "html": html,
        "truncated": text_cut or html_cut,
        "attachments": _attachments(message),
        "headers": spam_headers(message),
    }


def summarize(head: bytes) -> dict[str, Any]:
    """``from``, ``to`` and ``subject`` from the start of a message (its header; what
    follows a cut header is read as far as it goes): a list's line, without parsing
    each message whole."""
    header = head.split(b"\r\n\r\n", 1)[0]
    message = BytesHeaderParser(policy=policy.default).parsebytes(header)
    from_ = _addresses(message, "From")
    return {
        "from": from_[0] if from_ else None,
        "to": _addresses(message, "To"),
        "subject": _text(message.get("Subject", "")) or None,
    }
