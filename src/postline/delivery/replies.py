"""SMTP replies: untrusted text made safe, and classified by code, then by phrase rules.

Codes are parsed, never found as substrings ("retry in 5 minutes" is no 5xx);
the text is read only where the codes leave the question open (classify.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from postline.delivery.classify import Verdict, classify_permanent
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


#: Failures that are not permanent: the reply may change on the next attempt.
TEMPORARY = Verdict(BounceType.SOFT, "temporary")
NO_REPLY = Verdict(BounceType.SOFT, "no_reply")


def classify(reply: Reply) -> Verdict | None:
    """A failure's verdict (None for a success): temporary ones are soft, permanent ones
    by enhanced code where it settles the question, else by phrase rules (classify.py)."""
    if reply.is_success:
        return None
    if reply.code is None:
        return NO_REPLY  # timeouts, refused or dropped connections
    if not reply.is_permanent:
        return TEMPORARY
    return classify_permanent(reply.code, reply.enhanced_code, reply.text)


def bounce_type(reply: Reply) -> BounceType | None:
    """The bounce type alone, for callers that do not keep the rule."""
    verdict = classify(reply)
    return verdict.bounce_type if verdict is not None else None
