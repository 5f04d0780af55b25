"""Enhanced status codes (RFC 2034, RFC 3463) on every reply the submission port gives.

aiosmtpd writes many of its own replies without one ("503 Error: need RCPT
command", "552 Error: Too much mail data"). A server that says
ENHANCEDSTATUSCODES in its EHLO must put a code on each reply, and application
mailers show the client the code, so each known reply gets its precise code and
any other gets the class's generic one (``X.0.0``).
"""

from __future__ import annotations

import re

#: aiosmtpd's own texts (those it writes without a code) and the code each deserves.
_KNOWN: tuple[tuple[str, str], ...] = (
    ("552 Error: Too much mail data", "552 5.3.4 Message too big for system"),
    (
        "552 Error: message size exceeds fixed maximum message size",
        "552 5.3.4 Message size exceeds fixed maximum message size",
    ),
    ("500 Command line too long", "500 5.5.6 Command line too long"),
    ("500 Line too long", "500 5.5.6 Line too long"),
    ("503 Error: need MAIL command", "503 5.5.1 Error: need MAIL command"),
    ("503 Error: need RCPT command", "503 5.5.1 Error: need RCPT command"),
    ("503 Error: nested MAIL command", "503 5.5.1 Error: nested MAIL command"),
    ("503 Already authenticated", "503 5.5.1 Already authenticated"),
    ("500 Error: bad syntax", "500 5.5.2 Error: bad syntax"),
    ("500 Error: command", "500 5.5.1 Error: command"),
    ("501 ", "501 5.5.4 "),
    ("555 ", "555 5.5.4 "),
    ("502 ", "502 5.5.1 "),
    ("504 ", "504 5.5.4 "),
)
#: RFC 5321 4.5.3.1.5: a reply line is at most 512 octets, CRLF included.
MAX_REPLY = 510
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CODED = re.compile(r"^[245][0-9][0-9][ -][245]\.[0-9]{1,3}\.[0-9]{1,3}(?: |$)")
#: Replies that never carry a code: the greeting and the STARTTLS go-ahead (220), the
#: closing 221, AUTH challenges (334) and the go-ahead for DATA (354).
_EXEMPT = ("220", "221", "334", "354")


def enhance(reply: str) -> str:
    """``reply`` with an enhanced status code, unless it has one or takes none; cut to
    one reply line's length, with no control characters (aiosmtpd echoes an unknown
    command's name, which is the client's text)."""
    return _CONTROL.sub("?", _coded(reply))[:MAX_REPLY]


def _coded(reply: str) -> str:
    code = reply[:3]
    if _CODED.match(reply) or code in _EXEMPT or not code.isdigit() or code[0] not in "245":
        return reply
    if reply[3:4] == "-":
        return reply  # a continuation line: only EHLO's, which carry no codes
    for plain, coded in _KNOWN:
        if reply.startswith(plain):
            rest = reply[len(plain) :]
            # "501 5.5.4 " already ends its code: what follows is aiosmtpd's text.
            return coded + rest
    text = reply[4:] if len(reply) > 3 else ""
    return f"{code} {code[0]}.0.0 {text}".rstrip()
