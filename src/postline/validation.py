"""Checks on what clients send, shared by the HTTP API and SMTP submission."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from email.utils import getaddresses, parseaddr
from typing import TYPE_CHECKING, Any

from email_validator import EmailNotValidError, validate_email

if TYPE_CHECKING:
    from postline.config import Settings

#: Headers Postline writes itself; a client setting them could forge routing,
#: threading or recipients (a Bcc header would leak blind copies).
STRUCTURAL_HEADERS = frozenset(
    name.lower()
    for name in (
        "Bcc",
        "Cc",
        "To",
        "From",
        "Sender",
        "Subject",
        "Date",
        "Message-ID",
        "Reply-To",
        "Return-Path",
        "Received",
        "MIME-Version",
        "Content-Type",
        "Content-Transfer-Encoding",
        "Content-Disposition",
        "DKIM-Signature",
        "Delivered-To",
    )
)

#: Trace and authentication headers: written by the servers a message passes through
#: and by the receiving side's checks. A client setting them could make a message look
#: relayed, verified or addressed in ways it never was. (Received, Return-Path,
#: Delivered-To and DKIM-Signature are in STRUCTURAL_HEADERS: Postline writes them.)
TRACE_HEADERS = frozenset(
    name.lower()
    for name in (
        "X-Received",
        "Authentication-Results",
        "Received-SPF",
        "DomainKey-Signature",
        "X-Google-DKIM-Signature",
        "X-Forwarded-To",
        "X-Forwarded-For",
    )
)
#: Families of the same: ARC-Seal and ARC-Message-Signature, X-Original-To and
#: X-Original-From, Resent-From and the other resent fields.
TRACE_PREFIXES = ("arc-", "x-original-", "resent-")

# \Z, not $: $ also matches before a final newline, so "X-A\n" passed (tests/unit/
# test_properties_validation.py) and broke the header block.
_HEADER_NAME = re.compile(r"^[!-9;-~]{1,76}\Z")  # printable ASCII except ':' (RFC 5322 2.2)
MAX_HEADER_VALUE = 998


# Control characters except TAB, and every line boundary str.splitlines() knows
# (the email package raises on those later, in build_message, instead of here).
_NOT_HEADER_TEXT = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]")


def check_header_text(value: str) -> None:
    """Raise ValueError if text would break out of its header line."""
    if _NOT_HEADER_TEXT.search(value):
        raise ValueError("must not contain CR, LF, NUL or other control characters")


def normalize_address(address: str) -> str:
    """Validate a bare address (no display name); return it with its domain lower-cased."""
    check_header_text(address)
    text = address.strip()
    if not text or "<" in text or ">" in text or " " in text:
        raise ValueError(f"{address!r} is not a valid email address")
    try:
        result = validate_email(
            text,
            check_deliverability=False,
            allow_smtputf8=True,
            globally_deliverable=False,
            test_environment=True,  # .test domains: the sandbox and labs
        )
    except EmailNotValidError as exc:
        raise ValueError(f"{address!r} is not a valid email address: {exc}") from None
    return f"{result.local_part}@{result.ascii_domain or result.domain}".lower()


def _unquoted_angle_brackets(value: str) -> list[str]:
    """The ``<`` and ``>`` outside quoted strings, in order (a display name may quote them)."""
    found: list[str] = []
    quoted = escaped = False
    for char in value:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif not quoted and char in "<>":
            found.append(char)
    return found


#: A bare ``local@domain`` of ASCII atom characters and dots: what most mailboxes are.
#: The header parsers give such a value back as it is, so it goes straight to the
#: address's own checks (``test_a_bare_address_is_parsed_as_the_header_parsers_would``).
_BARE_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+")


@functools.lru_cache(maxsize=4096)
def parse_mailbox(value: str) -> tuple[str, str]:
    """Split ``Name <addr>`` or ``addr`` into (display name, normalized address).

    Cached: a batch names the same sender in each of its emails, and parsing is the
    dearest part of validating one (issue 20: validation runs on the event loop). A
    refusal raises, so only valid mailboxes are kept, at most 4,096 of them. A bare
    address skips the header parsers (45 -> 21 us for a new recipient): recipients
    rarely repeat, so the cache misses them.
    """
    if _BARE_ADDRESS.fullmatch(value):
        return "", normalize_address(value)
    return _parse_header_mailbox(value)


def _parse_header_mailbox(value: str) -> tuple[str, str]:
    check_header_text(value)
    # parseaddr forgives a missing bracket ("<a@b.test", "Name <a@b.test"): refuse it.
    if _unquoted_angle_brackets(value) not in ([], ["<", ">"]):
        raise ValueError(f"{value!r} has unbalanced angle brackets")
    if len(getaddresses([value])) != 1:
        raise ValueError(f"{value!r} must be exactly one address")
    name, address = parseaddr(value)
    if not address:
        raise ValueError(f"{value!r} is not a valid address")
    return name, normalize_address(address)


#: Types whose MIME structure Postline writes itself: as an attachment's type they made
#: a part that claimed sub-parts (or a whole message) it did not have.
_STRUCTURAL_TYPES = ("multipart/", "message/")


def check_attachment_type(content_type: str) -> None:
    if content_type.lower().startswith(_STRUCTURAL_TYPES):
        raise ValueError(
            f"{content_type} is a structural MIME type; send the content as a file type "
            "such as application/octet-stream"
        )


def check_custom_header(name: str, value: str) -> None:
    if not _HEADER_NAME.match(name):
        raise ValueError(f"header name {name!r} is not a valid header field name")
    lower = name.lower()
    if lower in STRUCTURAL_HEADERS:
        raise ValueError(f"header {name!r} is set by Postline and cannot be given")
    if lower in TRACE_HEADERS or lower.startswith(TRACE_PREFIXES):
        raise ValueError(
            f"header {name!r} is a trace or authentication header, written by the servers "
            "that carry and check a message; it cannot be given"
        )
    check_header_text(value)
    if len(value) > MAX_HEADER_VALUE:
        raise ValueError(f"header {name!r} is longer than {MAX_HEADER_VALUE} characters")


@dataclass(frozen=True)
class SubmissionLimits:
    """What one send request may ask Postline to build (``POSTLINE_MAX_*``).

    Building and signing are the expensive part of accepting mail, and a request
    could ask for a lot of it: 500 emails of 1,000 recipients each, or 20,000
    custom headers, once held the event loop for seconds (issue 20). Each cap is
    checked on the JSON as parsed, before any field is validated, so a request
    over it costs a count and nothing more.
    """

    recipients_per_request: int = 1000
    custom_headers: int = 50
    custom_header_bytes: int = 16 * 1024
    attachments: int = 50
    message_bytes: int = 25 * 1024 * 1024

    @classmethod
    def from_settings(cls, settings: Settings) -> SubmissionLimits:
        return cls(
            recipients_per_request=settings.max_recipients_per_request,
            custom_headers=settings.max_custom_headers,
            custom_header_bytes=settings.max_custom_header_bytes,
            attachments=settings.max_attachments,
            message_bytes=settings.max_message_bytes,
        )


class OverLimit(ValueError):
    """A request past one of the caps; ``status`` is 422, or 413 for a size."""

    def __init__(self, status: int, field: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.field = field
        self.message = message


def _count(value: Any) -> int:
    """Addresses in a to/cc/bcc value as sent: one string or a list (else validation says)."""
    if isinstance(value, str):
        return 1
    return len(value) if isinstance(value, list) else 0


def _header_bytes(headers: dict[Any, Any]) -> int:
    """Bytes of ``Name: value`` CRLF lines, as the headers are written (before folding)."""
    return sum(
        len(str(name).encode("utf-8", "surrogatepass"))
        + len(str(value).encode("utf-8", "surrogatepass"))
        + 4
        for name, value in headers.items()
    )


def _attachment_bytes(content: Any) -> int:
    """What an attachment weighs once decoded: base64 holds 3 bytes in 4 characters, and
    Resend's byte array one byte an item (validation refuses any other shape)."""
    if isinstance(content, str):
        return len(content) * 3 // 4
    return len(content) if isinstance(content, list) else 0


def _check_email_limits(email: dict[Any, Any], limits: SubmissionLimits, prefix: str) -> None:
    headers = email.get("headers")
    if isinstance(headers, dict):
        if len(headers) > limits.custom_headers:
            raise OverLimit(
                422,
                prefix + "headers",
                f"{len(headers)} custom headers; the limit is {limits.custom_headers} an email "
                "(POSTLINE_MAX_CUSTOM_HEADERS)",
            )
        size = _header_bytes(headers)
        if size > limits.custom_header_bytes:
            raise OverLimit(
                422,
                prefix + "headers",
                f"the custom headers are {size} bytes; the limit is {limits.custom_header_bytes}"
                " an email (POSTLINE_MAX_CUSTOM_HEADER_BYTES)",
            )
    attachments = email.get("attachments")
    if isinstance(attachments, list):
        if len(attachments) > limits.attachments:
            raise OverLimit(
                422,
                prefix + "attachments",
                f"{len(attachments)} attachments; the limit is {limits.attachments} an email "
                "(POSTLINE_MAX_ATTACHMENTS)",
            )
        size = sum(
            _attachment_bytes(item.get("content")) for item in attachments if isinstance(item, dict)
        )
        if size > limits.message_bytes:
            raise OverLimit(
                413,
                prefix + "attachments",
                f"the attachments are {size} bytes; the whole message may be at most "
                f"{limits.message_bytes} (POSTLINE_MAX_MESSAGE_BYTES)",
            )


def check_request_limits(emails: list[Any], limits: SubmissionLimits, *, batch: bool) -> int:
    """Check a send request's JSON against ``limits``; the recipients it names.

    Runs on the body as parsed, before validation: only counts and lengths, so a
    request that asks for too much is refused (``OverLimit``) before any address
    is parsed or any message built. Values of the wrong shape count as nothing
    here; validation refuses them next.
    """
    recipients = 0
    for index, email in enumerate(emails):
        if not isinstance(email, dict):
            continue
        recipients += sum(_count(email.get(kind)) for kind in ("to", "cc", "bcc"))
        _check_email_limits(email, limits, f"[{index}]." if batch else "")
    if recipients > limits.recipients_per_request:
        where = "the emails of this batch have" if batch else "this email has"
        raise OverLimit(
            422,
            "" if batch else "to",
            f"{where} {recipients} recipients (to, cc and bcc together); the limit is "
            f"{limits.recipients_per_request} a request (POSTLINE_MAX_RECIPIENTS_PER_REQUEST)",
        )
    return recipients
