"""Build the RFC 5322 message for an API submission.

:func:`build_message` writes the MIME bytes directly: header fields folded by
:mod:`postline.headerfold`, bodies encoded by the same rules and functions as the
``email`` package's content manager, parts and boundaries laid out as its
generator lays them out. The output is byte for byte what the ``email`` package
made (:func:`build_message_stdlib`, which still builds what this does not cover:
messages with non-ASCII addresses, which go out as SMTPUTF8, and unusual custom
headers or attachment types). Going through ``EmailMessage`` took most of the
time of accepting a message (issue 15); ``bench/build_message.py`` measures both.
"""

from __future__ import annotations

import base64
import random
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from urllib.parse import quote as urllib_quote

from postline.headerfold import (
    MAX_LINE,
    fold_addresses,
    fold_unstructured,
    protected_address_field,
    protected_unstructured_field,
    stdlib_fold,
)


@dataclass(frozen=True)
class Attachment:
    filename: str
    content: bytes
    content_type: str = "application/octet-stream"
    #: Set: an inline part the HTML names as ``cid:<content_id>`` (kept without brackets).
    content_id: str | None = None


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


CRLF = "\r\n"
MIME_VERSION = "MIME-Version: 1.0\r\n"
_NL = re.compile(r"\r\n|\r|\n")  # email.generator.NLCRE
_BOUNDARY_DIGITS = len(repr(sys.maxsize - 1))  # email.generator._width
#: Names the email package treats specially (its header registry, or content-*
#: headers that set_content clears); a message with such a custom header is built by it.
_REGISTRY = frozenset(policy.SMTP.header_factory.registry)  # type: ignore[attr-defined]
_MIME_NAME = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*"
_PLAIN_MIME_TYPE = re.compile(rf"{_MIME_NAME}/{_MIME_NAME}")
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_MESSAGE_ID = re.compile(rf"<{_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*>")
_PLAIN_FILENAME = re.compile(r"[ !#-\[\]-~]+")  # printable ASCII but " and \


def _address(display_name: str, address: str) -> Address:
    local, _, domain = address.rpartition("@")
    return Address(display_name=display_name, username=local, domain=domain)


def build_message_stdlib(content: Content, *, message_id: str, date: datetime) -> bytes:
    """The same message built by the ``email`` package (the reference for the tests)."""
    msg = EmailMessage(policy=policy.SMTP)
    _set_addresses(msg, "From", [(content.from_name, content.from_address)])
    if content.to:
        _set_addresses(msg, "To", [("", a) for a in content.to])
    else:
        msg["To"] = "undisclosed-recipients:;"
    if content.cc:
        _set_addresses(msg, "Cc", [("", a) for a in content.cc])
    if content.reply_to:
        _set_addresses(msg, "Reply-To", [("", a) for a in content.reply_to])
    _set_unstructured(msg, "Subject", content.subject)
    msg["Date"] = format_datetime(date)
    msg["Message-ID"] = message_id
    for name, value in content.headers.items():
        _set_unstructured(msg, name, value)
    html_part: EmailMessage | None = None
    if content.text is not None:
        msg.set_content(content.text)
        if content.html is not None:
            msg.add_alternative(content.html, subtype="html")
            html_part = list(msg.iter_parts())[1]  # type: ignore[assignment]
    else:
        msg.set_content(content.html or "", subtype="html")
        html_part = msg
    inline = [a for a in content.attachments if a.content_id is not None]
    for attachment in inline if html_part is not None else []:
        # The HTML and its images in one multipart/related (RFC 2387), inside the
        # alternative when there is a text part: text | (html + images).
        maintype, subtype = _types(attachment)
        html_part.add_related(  # type: ignore[union-attr]
            attachment.content,
            maintype=maintype,
            subtype=subtype,
            filename=attachment.filename,
            disposition="inline",
            cid=f"<{attachment.content_id}>",
        )
    for attachment in content.attachments:
        if attachment.content_id is not None and html_part is not None:
            continue
        maintype, subtype = _types(attachment)
        cid = None if attachment.content_id is None else f"<{attachment.content_id}>"
        msg.add_attachment(
            attachment.content,
            maintype=maintype,
            subtype=subtype,
            filename=attachment.filename,
            # No HTML to refer to it: inline all the same.
            disposition="attachment" if cid is None else "inline",
            cid=cid,
        )
    addresses = [content.from_address, *content.to, *content.cc, *content.reply_to]
    utf8 = not all(a.isascii() for a in addresses)
    # refold_source="none": a field set raw (_set_addresses) is written as given; every
    # other field is a header object, which the policy folds as before.
    return msg.as_bytes(policy=_RAW_SMTPUTF8 if utf8 else _RAW_SMTP)


def _types(attachment: Attachment) -> tuple[str, str]:
    maintype, _, subtype = attachment.content_type.partition("/")
    return maintype or "application", subtype or "octet-stream"


_RAW_SMTP = policy.SMTP.clone(refold_source="none")
_RAW_SMTPUTF8 = policy.SMTPUTF8.clone(refold_source="none")


def _set_addresses(msg: EmailMessage, name: str, mailboxes: list[tuple[str, str]]) -> None:
    """``msg[name] = [Address, ...]``, but never through the email package's folding of
    a display name it would unquote (:func:`postline.headerfold.protected_address_field`)."""
    protected = protected_address_field(name, mailboxes)
    if protected is None:
        msg[name] = [_address(display, address) for display, address in mailboxes]
    else:
        _set_written(msg, name, protected)


def _set_unstructured(msg: EmailMessage, name: str, value: str) -> None:
    """``msg[name] = value``, but never through the email package's decoding of text
    that reads as an encoded word (:func:`postline.headerfold.protected_unstructured_field`)."""
    protected = protected_unstructured_field(name, value)
    if protected is None:
        msg[name] = value
    else:
        _set_written(msg, name, protected)


def _set_written(msg: EmailMessage, name: str, field: str) -> None:
    """A field written by ``headerfold`` (``Name: value`` folded, CRLF-terminated), set
    raw so that the email package writes it unchanged (``refold_source="none"``)."""
    msg.set_raw(name, field[len(name) + 2 : -len(CRLF)])  # after the label


def build_message(content: Content, *, message_id: str, date: datetime) -> bytes:
    """Serialise with CRLF line ends, ready for DATA (Bcc never appears)."""
    if _needs_email_package(content):
        return build_message_stdlib(content, message_id=message_id, date=date)
    return _Writer(content).message(message_id, date)


def _needs_email_package(content: Content) -> bool:
    """Cheap checks for what only the email package builds (or refuses) as it should."""
    addresses = [content.from_address, *content.to, *content.cc, *content.reply_to]
    if not all(a.isascii() for a in addresses):
        return True  # SMTPUTF8: raw UTF-8 header fields, another folding policy
    for name in content.headers:
        lower = name.lower()
        if lower in _REGISTRY or lower.startswith("content-"):
            return True
    for attachment in content.attachments:
        if attachment.content_id is not None:
            return True  # multipart/related: rare enough to leave to the email package
        ctype = attachment.content_type
        maintype = ctype.partition("/")[0].lower()
        if not _PLAIN_MIME_TYPE.fullmatch(ctype) or maintype in ("multipart", "message"):
            return True
        if not attachment.filename:
            return True
    return False


def _line(name: str, value: str) -> str:
    """A field the email package writes unchanged when it fits on one line."""
    text = f"{name}: {value}"
    return text + CRLF if len(text) <= MAX_LINE else stdlib_fold(name, value)


def _part(headers: list[str], body: bytes) -> bytes:
    return ("".join(headers) + CRLF).encode("ascii") + body


def _encode_text(text: str) -> tuple[str, bytes]:
    """``email.contentmanager._encode_text`` for utf-8 under policy.SMTP, written out.

    Returns the transfer encoding and the body as the generator writes it (CRLF).
    """
    lines = text.encode("utf-8").splitlines()
    if max(map(len, lines), default=0) <= MAX_LINE:
        body = b"\r\n".join(lines) + b"\r\n"
        return ("7bit" if body.isascii() else "8bit"), body
    sniff = b"\r\n".join(lines[:10]) + b"\r\n"
    sniff_qp = _qp_body(sniff.decode("latin-1"))
    if len(sniff_qp) > len(base64.b64encode(sniff)) + 1:  # b2a_base64 adds a newline
        whole = b"\r\n".join(lines) + b"\r\n"
        return "base64", base64.encodebytes(whole).replace(b"\n", b"\r\n")
    if len(lines) <= 10:
        payload = sniff_qp
    else:
        payload = _qp_body((b"\n".join(lines) + b"\n").decode("latin-1"))
    return "quoted-printable", _NL.sub(CRLF, payload).encode("ascii")


# email.quoprimime._QUOPRI_BODY_ENCODE_MAP leaves these alone and writes =XX for the rest.
_QP_UNSAFE = re.compile(r"[^\t\r\n -<>-~]")
_QP_ESCAPE = {chr(byte): f"={byte:02X}" for byte in range(256)}


def _qp_escape(match: re.Match[str]) -> str:
    return _QP_ESCAPE[match[0]]


def _qp_body(body: str, maxlinelen: int = MAX_LINE) -> str:
    """``email.quoprimime.body_encode(body, maxlinelen)``, quoting by regex, not translate().

    ``body`` is bytes decoded as latin-1, as the content manager hands it over.
    """
    if not body:
        return body
    body = _QP_UNSAFE.sub(_qp_escape, body)
    soft_break = "=\n"
    maxlinelen1 = maxlinelen - 1
    encoded: list[str] = []
    append = encoded.append
    for line in body.splitlines():
        start = 0
        laststart = len(line) - 1 - maxlinelen
        while start <= laststart:
            stop = start + maxlinelen1
            if line[stop - 2] == "=":  # never split an =XX escape
                append(line[start : stop - 1])
                start = stop - 2
            elif line[stop - 1] == "=":
                append(line[start:stop])
                start = stop - 1
            else:
                append(line[start:stop] + "=")
                start = stop
        if line and line[-1] in " \t":  # white space ending a line is quoted
            room = start - laststart
            if room >= 3:
                last = _QP_ESCAPE[line[-1]]
            elif room == 2:
                last = line[-1] + soft_break
            else:
                last = soft_break + _QP_ESCAPE[line[-1]]
            append(line[start:-1] + last)
        else:
            append(line[start:])
    if body[-1] in "\r\n":
        append("")
    return "\n".join(encoded)


class _Writer:
    """One message's parts, in the order and shape ``EmailMessage`` gives them."""

    def __init__(self, content: Content) -> None:
        self.content = content

    def message(self, message_id: str, date: datetime) -> bytes:
        content = self.content
        head = [fold_addresses("From", [(content.from_name, content.from_address)])]
        if content.to:
            head.append(fold_addresses("To", [("", a) for a in content.to]))
        else:
            head.append("To: undisclosed-recipients:;" + CRLF)
        if content.cc:
            head.append(fold_addresses("Cc", [("", a) for a in content.cc]))
        if content.reply_to:
            head.append(fold_addresses("Reply-To", [("", a) for a in content.reply_to]))
        head.append(fold_unstructured("Subject", content.subject))
        head.append(_line("Date", format_datetime(date)))
        if _PLAIN_MESSAGE_ID.fullmatch(message_id):
            head.append(_line("Message-ID", message_id))
        else:
            head.append(stdlib_fold("Message-ID", message_id))
        head.extend(fold_unstructured(name, value) for name, value in content.headers.items())

        if content.text is not None and content.html is not None:
            plain = _part(*self._text(content.text, "plain"))
            html_headers, html_body = self._text(content.html, "html")
            html = _part([*html_headers, MIME_VERSION], html_body)
            alternative = self._multipart("alternative", [plain, html])
            first_headers, first_body = [alternative[0]], alternative[1]
        else:
            text, subtype = (
                (content.text, "plain")
                if content.text is not None
                else (content.html or "", "html")
            )
            first_headers, first_body = self._text(text, subtype)
            alternative = None
        if content.attachments:
            parts = [_part(first_headers, first_body)]
            parts += [self._attachment(a) for a in content.attachments]
            mixed, body = self._multipart("mixed", parts)
            head += [MIME_VERSION, mixed]
        elif alternative is not None:
            head += [MIME_VERSION, *first_headers]
            body = first_body
        else:
            head += [*first_headers, MIME_VERSION]
            body = first_body
        return _part(head, body)

    @staticmethod
    def _text(text: str, subtype: str) -> tuple[list[str], bytes]:
        cte, body = _encode_text(text)
        headers = [
            f'Content-Type: text/{subtype}; charset="utf-8"{CRLF}',
            f"Content-Transfer-Encoding: {cte}{CRLF}",
        ]
        return headers, body

    @staticmethod
    def _attachment(attachment: Attachment) -> bytes:
        maintype, _, subtype = attachment.content_type.partition("/")
        filename = attachment.filename
        if filename.isascii():
            param = 'filename="{}"'.format(filename.replace("\\", "\\\\").replace('"', '\\"'))
        else:
            param = "filename*=utf-8''" + urllib_quote(filename, safe="", encoding="utf-8")
        disposition = "attachment; " + param
        if _PLAIN_FILENAME.fullmatch(filename) and "=?" not in filename:
            disposition_line = _line("Content-Disposition", disposition)
        else:
            disposition_line = stdlib_fold("Content-Disposition", disposition)
        headers = [
            _line("Content-Type", f"{maintype}/{subtype}"),
            "Content-Transfer-Encoding: base64" + CRLF,
            disposition_line,
            MIME_VERSION,
        ]
        return _part(headers, base64.encodebytes(attachment.content).replace(b"\n", b"\r\n"))

    @staticmethod
    def _multipart(subtype: str, parts: list[bytes]) -> tuple[str, bytes]:
        """(Content-Type field, body) of a multipart around ``parts``.

        The boundary is drawn as ``email.generator`` draws it, inner parts first, so
        that a seeded ``random`` gives both builders the same one.
        """
        boundary = _boundary(b"\r\n".join(parts))
        value = f'multipart/{subtype}; boundary="{boundary}"'
        if len(value) + len("Content-Type: ") <= MAX_LINE:
            content_type = f"Content-Type: {value}{CRLF}"
        elif subtype == "alternative" and len(boundary) == 15 + _BOUNDARY_DIGITS + 2:
            content_type = f'Content-Type: multipart/alternative;{CRLF} boundary="{boundary}"{CRLF}'
        else:
            content_type = stdlib_fold("Content-Type", value)
        delimiter = f"\r\n--{boundary}\r\n".encode("ascii")
        body = delimiter[2:] + delimiter.join(parts) + f"\r\n--{boundary}--\r\n".encode("ascii")
        return content_type, body


def _boundary(text: bytes) -> str:
    """``email.generator.Generator._make_boundary``: random, and not a line of ``text``."""
    boundary = "=" * 15 + f"{random.randrange(sys.maxsize):0{_BOUNDARY_DIGITS}d}" + "=="
    candidate = boundary
    counter = 0
    while b"--" + candidate.encode("ascii") in text and re.search(
        b"^--" + re.escape(candidate.encode("ascii")) + b"(--)?$", text, re.MULTILINE
    ):
        candidate = f"{boundary}.{counter}"
        counter += 1
    return candidate
