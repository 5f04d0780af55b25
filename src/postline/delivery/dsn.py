"""Delivery status notifications (RFC 3464): tell a sender which recipients failed, and why.

Pure functions, no I/O. The caller asks :func:`needs_dsn` whether the original deserves a
notification at all (never for a null sender or another automatic message, so two mail systems
cannot bounce at each other forever), builds it with :func:`build_dsn` and sends it with the
null envelope sender ``MAIL FROM:<>``.

Everything a remote server said is untrusted: it reaches the report only through
:func:`_ascii_text`, which makes it one line of printable ASCII (RFC 3464 fields are ASCII) so
it can never start a header, a DSN field or a MIME boundary of its own (design trap 10).
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage, Message, MIMEPart
from email.parser import BytesParser
from email.utils import format_datetime

from postline.delivery.replies import MAX_REPLY_BYTES, sanitize

ACTIONS = frozenset({"failed", "delayed"})
"""Actions this module reports: a final failure (bounce or expiry) or, later, a delay warning."""

SUBJECT_FAILED = "Undelivered Mail Returned to Sender"
SUBJECT_DELAYED = "Delayed Mail (still being retried)"

MAX_ADDRESS_BYTES = 254
"""RFC 5321 §4.5.3.1.3: a path is at most 256 octets with its angle brackets."""

_STATUS = re.compile(r"([245])\.\d{1,3}\.\d{1,3}")
_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,251}[A-Za-z0-9.])?")
# C0 and C1 controls, the Unicode line separators and lone surrogates (undecodable bytes):
# never allowed in an address.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_SPACES = re.compile(r" {2,}")
_COMMENT = re.compile(r"\([^()]*\)")
_AUTOMATIC_SENDERS = frozenset({"mailer-daemon", "postmaster"})
# 78 is the line length RFC 5322 asks for; 998 the one it requires.
_SOFT_LINE = 78
_HARD_LINE = 998
_MAX_HOST_BYTES = 255
_LONGEST_ESCAPE = len("\\x{10FFFF}")
# The generator must write the fields this module folds itself exactly as given.
_POLICY = policy.SMTP.clone(refold_source="none")


@dataclass(frozen=True)
class FailedRecipient:
    """One recipient's outcome, as it goes into its own per-recipient DSN block.

    ``status`` is the RFC 3463 enhanced code: the remote one for a bounce, ``4.4.7`` for a
    message that expired while still being retried (with ``action="failed"``).
    ``diagnostic`` is the remote SMTP reply line, untrusted; it is cleaned when the DSN is built.
    """

    address: str
    action: str
    status: str
    remote_mta: str | None
    diagnostic: str | None
    last_attempt: datetime | None

    def __post_init__(self) -> None:
        _check_address(self.address, "recipient address")
        if self.action not in ACTIONS:
            raise ValueError(f"action must be one of {sorted(ACTIONS)}, not {self.action!r}")
        match = _STATUS.fullmatch(self.status)
        if match is None:
            raise ValueError(f"status must be an enhanced status code, not {self.status!r}")
        if self.action == "failed" and match.group(1) == "2":
            raise ValueError(f"a failed recipient cannot have the success status {self.status}")
        if self.action == "delayed" and match.group(1) != "4":
            raise ValueError(f"a delayed recipient needs a 4.x.x status, not {self.status}")
        if self.last_attempt is not None:
            _check_aware(self.last_attempt, "last_attempt")


@dataclass(frozen=True)
class OriginalMessage:
    """What the DSN needs to know about the message that failed.

    ``headers`` is the original header block (bytes up to the first blank line);
    ``envelope_id`` is our email id, reported as Original-Envelope-Id so the sender can match
    the report to what it sent.
    """

    envelope_from: str
    headers: bytes
    message_id: str | None
    envelope_id: str | None


def needs_dsn(original: OriginalMessage) -> bool:
    """Whether a failure of ``original`` should be reported to its sender.

    No for a null sender (nobody to tell), for MAILER-DAEMON or postmaster senders, and for an
    original that is itself a report (``multipart/report``) or marked ``Auto-Submitted`` with
    anything but ``no`` (RFC 3834): answering automatic mail automatically is how mail loops
    start. ``Precedence: bulk/junk/list`` is deliberately not a reason: transactional mail is
    often marked bulk, and its sender still needs to learn an address is dead.
    """
    sender = original.envelope_from.strip().removeprefix("<").removesuffix(">").strip()
    if not sender:
        return False
    local = sender.rpartition("@")[0] if "@" in sender else sender
    if local.strip('"').lower() in _AUTOMATIC_SENDERS:
        return False
    # compat32 never raises on malformed input; it keeps whatever it can read.
    headers = BytesParser(policy=policy.compat32).parsebytes(original.headers, headersonly=True)
    if any(_token(str(v)) == "multipart/report" for v in headers.get_all("Content-Type", [])):
        return False
    return all(_token(str(v)) == "no" for v in headers.get_all("Auto-Submitted", []))


def build_dsn(
    *,
    reporting_mta: str,
    original: OriginalMessage,
    recipients: Sequence[FailedRecipient],
    notify_to: str,
    arrival: datetime,
    now: datetime,
    message_id: str,
) -> bytes:
    """The complete DSN message, CRLF line ends, ready for SMTP DATA.

    The caller must send it with the null envelope sender ``MAIL FROM:<>`` (RFC 3464 §2,
    RFC 5321 §4.5.5) so a failure to deliver the report is never reported in turn. If
    ``notify_to`` is not ASCII its header is written as UTF-8 (RFC 6532); delivering to such an
    address needs SMTPUTF8 anyway.

    Remote text (diagnostics, MX names) becomes one line of printable ASCII of at most
    1024 bytes: control characters and line breaks are removed, runs of spaces collapsed, and
    each non-ASCII character (and the backslash itself, so the escape stays unambiguous) is
    written as ``\\x{HEX}``, the escape RFC 6533 uses for UTF-8 text in ASCII DSN fields. The
    escaped text is cut before whole escapes, never inside one. The same escaped form is shown
    in the human-readable part, so what a person reads is what the machine part says.

    Raises ``ValueError`` for an address with control characters (CR/LF would inject headers),
    an implausible ``reporting_mta``, naive datetimes, or no recipients at all.
    """
    if not recipients:
        raise ValueError("a DSN reports at least one recipient")
    if not _HOSTNAME.fullmatch(reporting_mta):
        raise ValueError(f"reporting_mta must be a host name, not {reporting_mta!r}")
    notify = notify_to.strip().removeprefix("<").removesuffix(">")
    _check_address(notify, "notify_to")
    if not notify or "@" not in notify:
        raise ValueError(f"notify_to must be an address, not {notify_to!r}")
    if _CONTROL.search(message_id):
        raise ValueError("message_id must not contain control characters")
    _check_aware(arrival, "arrival")
    _check_aware(now, "now")

    msg = EmailMessage(policy=_POLICY)
    msg["From"] = Address("Mail Delivery System", "MAILER-DAEMON", reporting_mta)
    local, _, domain = notify.rpartition("@")
    msg["To"] = Address("", local, domain)
    delayed_only = all(r.action == "delayed" for r in recipients)
    msg["Subject"] = SUBJECT_DELAYED if delayed_only else SUBJECT_FAILED
    msg["Date"] = format_datetime(now)
    msg["Message-ID"] = message_id
    msg["Auto-Submitted"] = "auto-replied"
    msg["MIME-Version"] = "1.0"
    msg["Content-Type"] = "multipart/report; report-type=delivery-status"
    report: list[Message | str] = [
        _explanation(reporting_mta, original, recipients),
        _delivery_status(reporting_mta, original, recipients, arrival),
        _original_headers(original.headers),
    ]
    msg.set_payload(report)
    return msg.as_bytes(policy=_POLICY.clone(utf8=not notify.isascii()))


def _explanation(
    reporting_mta: str, original: OriginalMessage, recipients: Sequence[FailedRecipient]
) -> MIMEPart:
    """Part 1: the text a person reads, one line per recipient."""
    lines = [
        f"This is the mail system at {reporting_mta}.",
        "",
        "Your message could not be delivered to one or more recipients.",
        "The details are below; a machine-readable report is attached.",
    ]
    if original.message_id:
        lines.append(f"Original Message-ID: {_ascii_text(original.message_id, MAX_REPLY_BYTES)}")
    lines.append("")
    for r in recipients:
        what = "delivery delayed, still retrying" if r.action == "delayed" else "delivery failed"
        if r.action == "failed" and r.status.startswith("4."):
            what = "delivery failed, gave up after repeated temporary errors"
        line = f"<{_address_text(r.address)}>: {what} (status {r.status})"
        host = _ascii_text(r.remote_mta or "", _MAX_HOST_BYTES)
        diagnostic = _ascii_text(r.diagnostic or "", MAX_REPLY_BYTES)
        if diagnostic:
            line += f"; {host or 'the remote server'} said: {diagnostic}"
        elif host:
            line += f"; last tried {host}"
        lines.append(line)
    part = MIMEPart(policy=_POLICY)
    # Long lines come out quoted-printable: still one line each once decoded.
    part.set_content("\n".join(lines) + "\n", charset="us-ascii")
    part["Content-Description"] = "Notification"
    return part


def _delivery_status(
    reporting_mta: str,
    original: OriginalMessage,
    recipients: Sequence[FailedRecipient],
    arrival: datetime,
) -> MIMEPart:
    """Part 2: the per-message block, then one block per recipient (never one joining many)."""
    per_message = [("Reporting-MTA", f"dns; {reporting_mta}")]
    if original.envelope_id:
        per_message.append(("Original-Envelope-Id", _xtext(original.envelope_id)))
    per_message.append(("Arrival-Date", format_datetime(arrival)))
    blocks: list[Message | str] = [_block(per_message)]
    for r in recipients:
        fields = [
            ("Final-Recipient", _final_recipient(r.address)),
            ("Action", r.action),
            ("Status", r.status),
        ]
        host = _ascii_text(r.remote_mta or "", _MAX_HOST_BYTES)
        if host:
            fields.append(("Remote-MTA", f"dns; {host}"))
        diagnostic = _ascii_text(r.diagnostic or "", MAX_REPLY_BYTES)
        if diagnostic:
            fields.append(("Diagnostic-Code", f"smtp; {diagnostic}"))
        if r.last_attempt is not None:
            fields.append(("Last-Attempt-Date", format_datetime(r.last_attempt)))
        blocks.append(_block(fields))
    part = MIMEPart(policy=_POLICY)
    part["Content-Type"] = "message/delivery-status"
    part["Content-Description"] = "Delivery report"
    part.set_payload(blocks)
    return part


def _block(fields: Sequence[tuple[str, str]]) -> Message:
    """One header-like block; values are already ASCII and folded, so they are stored raw."""
    block = Message(policy=_POLICY)
    for name, value in fields:
        block.set_raw(name, _fold(name, value)[len(name) + 2 :])
    return block


def _original_headers(raw: bytes) -> MIMEPart:
    """Part 3: the original header block as ``text/rfc822-headers``.

    Plain 7bit when it already is short lines of printable ASCII; otherwise quoted-printable,
    which keeps 8-bit headers, stray control bytes and over-long lines intact without letting
    them break the report's MIME structure or the 998-byte line limit.
    """
    lines: list[bytes] = []
    for line in raw.splitlines():
        if not line.strip(b" \t"):
            break  # the end of the header block; the body is never echoed back
        lines.append(line)
    text = b"\n".join(lines) + b"\n" if lines else b""
    part = MIMEPart(policy=_POLICY)
    part["Content-Type"] = "text/rfc822-headers"
    part["Content-Description"] = "Undelivered message headers"
    if all(len(line) <= _HARD_LINE and _printable_ascii(line) for line in lines):
        part["Content-Transfer-Encoding"] = "7bit"
        part.set_payload(text.decode("ascii"))
    else:
        part["Content-Transfer-Encoding"] = "quoted-printable"
        part.set_payload(binascii.b2a_qp(text, istext=True).decode("ascii"))
    return part


def _printable_ascii(line: bytes) -> bool:
    return all(32 <= byte < 127 or byte == 9 for byte in line)


def _ascii_text(text: str, limit: int) -> str:
    """Untrusted text as one line of printable ASCII, at most ``limit`` bytes.

    Non-ASCII characters and ``\\`` become ``\\x{HEX}`` (RFC 6533's escape); the cut falls
    between whole characters or escapes.
    """
    flat = _SPACES.sub(" ", sanitize(text))
    out: list[str] = []
    size = 0
    for char in flat:
        token = char if " " <= char <= "~" and char != "\\" else f"\\x{{{ord(char):X}}}"
        if size + len(token) > limit:
            break
        out.append(token)
        size += len(token)
    return "".join(out).strip()


def _final_recipient(address: str) -> str:
    """``rfc822; addr`` for ASCII; RFC 6533's ``utf-8`` type, escaped, for the rest."""
    if address.isascii():
        return f"rfc822; {address}"
    return f"utf-8; {_address_text(address)}"


def _address_text(address: str) -> str:
    return "".join(c if " " <= c <= "~" and c != "\\" else f"\\x{{{ord(c):X}}}" for c in address)


def _xtext(value: str) -> str:
    """RFC 3461 xtext, the form the envelope id has on the wire (our ids pass unchanged)."""
    return "".join(
        chr(b) if 33 <= b <= 126 and b not in (0x2B, 0x3D) else f"+{b:02X}" for b in value.encode()
    )


def _fold(name: str, value: str) -> str:
    """Fold ``name: value`` before spaces: lines of at most 78 characters where the text allows.

    A space-free run longer than that stays whole up to 998 characters (the hard limit) and
    is only then broken, between escapes, by inserting a folding space (one extra space in
    the unfolded value: the price of a 1024-byte token in a 998-byte line). Values have
    single spaces only (:func:`_ascii_text`), so no continuation line is ever blank, which a
    reader could mistake for the end of the block.
    """
    line = f"{name}: {value}"
    lines: list[str] = []
    start = len(name) + 2  # never fold between the name and its value
    while len(line) > _SOFT_LINE:
        cut = line.rfind(" ", start, _SOFT_LINE + 1)
        if cut == -1:
            cut = line.find(" ", start, _HARD_LINE + 1)
        if cut == -1:
            cut = _HARD_LINE
            escape = line.rfind("\\", cut - _LONGEST_ESCAPE + 1, cut)
            if escape != -1 and "}" not in line[escape:cut]:
                cut = escape  # never split a \x{HEX} escape
            lines.append(line[:cut])
            line = " " + line[cut:]
        else:
            lines.append(line[:cut])
            line = line[cut:]
        start = 1
    lines.append(line)
    return "\r\n".join(lines)


def _token(value: str) -> str:
    """The first word of a structured header value, without comments, lower case."""
    words = _COMMENT.sub(" ", value).replace(";", " ").split()
    return words[0].lower() if words else ""


def _check_address(address: str, what: str) -> None:
    if _CONTROL.search(address):
        raise ValueError(f"{what} must not contain control characters (CR/LF): {address!r}")
    if len(address.encode()) > MAX_ADDRESS_BYTES:
        raise ValueError(f"{what} is longer than {MAX_ADDRESS_BYTES} bytes")


def _check_aware(moment: datetime, what: str) -> None:
    # A naive time would be written with the unknown zone -0000; refuse rather than guess.
    if moment.tzinfo is None:
        raise ValueError(f"{what} must be an aware datetime")
