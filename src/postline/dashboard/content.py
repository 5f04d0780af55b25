"""An email's raw message, as the detail page shows it: headers and text, never HTML.

The HTML part is shown as its source text (escaped by the template), so nothing in a
customer's message runs in the operator's browser.
"""

from __future__ import annotations

from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage

#: How much of a body the page shows; the rest is in ``GET /v1/emails/{id}/content``.
SHOWN = 64 * 1024


@dataclass(frozen=True)
class Shown:
    headers: list[tuple[str, str]]
    text: str | None
    html: str | None
    attachments: list[str]
    size: int


def _part(message: EmailMessage, kind: str) -> str | None:
    part = message.get_body(preferencelist=(kind,))
    if part is None:
        return None
    try:
        content = part.get_content()
    except (LookupError, ValueError):
        return None
    return content[:SHOWN] if isinstance(content, str) else None


def shown(raw: bytes) -> Shown:
    message = message_from_bytes(raw, policy=policy.default)
    assert isinstance(message, EmailMessage)  # policy.default builds EmailMessage
    headers = [(name, str(value)) for name, value in message.items()]
    attachments = [part.get_filename() or "(unnamed)" for part in message.iter_attachments()]
    return Shown(headers, _part(message, "plain"), _part(message, "html"), attachments, len(raw))
