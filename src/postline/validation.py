"""Checks on what clients send, shared by the HTTP API and SMTP submission."""

from __future__ import annotations

import re
from email.utils import getaddresses, parseaddr

from email_validator import EmailNotValidError, validate_email

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


def parse_mailbox(value: str) -> tuple[str, str]:
    """Split ``Name <addr>`` or ``addr`` into (display name, normalized address)."""
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
