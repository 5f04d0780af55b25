"""SMTP replies: untrusted text made safe, and classified by code, never by substring."""

from __future__ import annotations

import re
from dataclasses import dataclass

from postline.model import BounceType

MAX_REPLY_BYTES = 1024
# C0 and C1 controls (tab included) and the Unicode line/paragraph separators.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# Undecodable bytes (aiosmtplib decodes with surrogateescape) cannot be stored as UTF-8.
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)")


def sanitize(text: str) -> str:
    """Printable, single-line, at most 1024 UTF-8 bytes (cut on a character boundary)."""
    flat = " ".join(text.replace("\t", " ").splitlines())
    clean = _CONTROL.sub("", _SURROGATE.sub("\ufffd", flat)).strip()
    return clean.encode()[:MAX_REPLY_BYTES].decode(errors="ignore")


@dataclass(frozen=True)
class Reply:
    """One SMTP reply (code None: no reply at all — connection error or timeout)."""

    code: int | None
    text: str

    @staticmethod
    def of(code: int | None, text: str) -> Reply:
        # aiosmtplib reports a reply it could not parse as code -1: that is no reply at all.
        valid = code if code is not None and 200 <= code <= 599 else None
        return Reply(valid, sanitize(text))

    @property
    def enhanced_code(self) -> str | None:
        match = _ENHANCED.match(self.text)
        if not match or self.code is None or match.group(1) != str(self.code)[0]:
            return None
        return ".".join(match.groups())

    @property
    def is_success(self) -> bool:
        return self.code is not None and 200 <= self.code < 300

    @property
    def is_permanent(self) -> bool:
        return self.code is not None and 500 <= self.code < 600

    @property
    def line(self) -> str:
        """The reply as stored and shown: code and text, still within the 1024-byte bound."""
        return sanitize(f"{self.code} {self.text}") if self.code is not None else self.text


#: Permanent failures by RFC 3463 (subject, detail); None matches any detail.
#: The most specific row wins. Only the rows marked HARD are about the address
#: itself, and only they may suppress it.
ENHANCED_TABLE: dict[tuple[str, str | None], BounceType] = {
    ("1", None): BounceType.HARD,  # addressing: bad mailbox, bad domain, moved
    ("2", "1"): BounceType.HARD,  # mailbox disabled, not accepting messages
    ("2", None): BounceType.SOFT,  # mailbox full (2.2), message too big for it (2.3)
    ("3", None): BounceType.SOFT,  # mail system: full, not accepting, too big
    ("4", None): BounceType.UNDETERMINED,  # network and routing
    ("5", None): BounceType.UNDETERMINED,  # protocol
    ("6", None): BounceType.UNDETERMINED,  # content and media
    ("7", None): BounceType.BLOCK,  # security and policy: spam, reputation, DMARC
}

#: Permanent replies without an enhanced code, by basic code (RFC 5321 4.2.2).
BASIC_TABLE: dict[int, BounceType] = {
    550: BounceType.HARD,  # mailbox unavailable
    551: BounceType.HARD,  # user not local
    553: BounceType.HARD,  # mailbox name not allowed
    552: BounceType.SOFT,  # storage allocation exceeded
    554: BounceType.UNDETERMINED,  # transaction failed
}


def bounce_type(reply: Reply) -> BounceType | None:
    """Refine a failure: temporary ones are soft; permanent ones by table (RFC 3463)."""
    if reply.is_success:
        return None
    if not reply.is_permanent:
        return BounceType.SOFT  # 4xx, timeouts, refused or dropped connections
    enhanced = reply.enhanced_code
    if enhanced is None:
        assert reply.code is not None
        return BASIC_TABLE.get(reply.code, BounceType.UNDETERMINED)
    _, subject, detail = enhanced.split(".")
    return ENHANCED_TABLE.get(
        (subject, detail), ENHANCED_TABLE.get((subject, None), BounceType.UNDETERMINED)
    )
