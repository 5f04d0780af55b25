"""Build the RFC 5322 message for an API submission."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime


@dataclass(frozen=True)
class Attachment:
    filename: str
    content: bytes
    content_type: str = "application/octet-stream"


@dataclass(frozen=True)
class Content:
    """What the client asked to send, already validated."""

    from_name: str
    from_address: str
    to: list[str]
    cc: list[str] = field(default_factory=list)
    reply_to: list[str] = field(default_factory=list)
    subject: str = ""
    text: str | None = None
    html: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    attachments: list[Attachment] = field(default_factory=list)


def _address(display_name: str, address: str) -> Address:
    local, _, domain = address.rpartition("@")
    return Address(display_name=display_name, username=local, domain=domain)


def build_message(content: Content, *, message_id: str, date: datetime) -> bytes:
    """Serialise with CRLF line ends, ready for DATA (Bcc never appears)."""
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = _address(content.from_name, content.from_address)
    msg["To"] = [_address("", a) for a in content.to] if content.to else "undisclosed-recipients:;"
    if content.cc:
        msg["Cc"] = [_address("", a) for a in content.cc]
    if content.reply_to:
        msg["Reply-To"] = [_address("", a) for a in content.reply_to]
    msg["Subject"] = content.subject
    msg["Date"] = format_datetime(date)
    msg["Message-ID"] = message_id
    for name, value in content.headers.items():
        msg[name] = value
    if content.text is not None:
        msg.set_content(content.text)
        if content.html is not None:
            msg.add_alternative(content.html, subtype="html")
    else:
        msg.set_content(content.html or "", subtype="html")
    for attachment in content.attachments:
        maintype, _, subtype = attachment.content_type.partition("/")
        msg.add_attachment(
            attachment.content,
            maintype=maintype or "application",
            subtype=subtype or "octet-stream",
            filename=attachment.filename,
        )
    addresses = [content.from_address, *content.to, *content.cc, *content.reply_to]
    utf8 = not all(a.isascii() for a in addresses)
    return msg.as_bytes(policy=policy.SMTPUTF8 if utf8 else policy.SMTP)
