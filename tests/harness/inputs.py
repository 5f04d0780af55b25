"""Hostile input shared by the validation tests and their hypothesis properties."""

from __future__ import annotations

__all__ = ["LINE_BREAKS"]

#: Every character some mail or HTTP stack treats as the end of a header line: CR, LF,
#: CRLF, and the Unicode breaks str.splitlines() honours. Any of them inside a header
#: value would let a caller inject a header (``Subject: hi\nBcc: victim``).
LINE_BREAKS = (
    "\r",
    "\n",
    "\r\n",
    "\x0b",
    "\x0c",
    "\x1c",
    "\x1d",
    "\x1e",
    "\x85",
    "\u2028",
    "\u2029",
)
