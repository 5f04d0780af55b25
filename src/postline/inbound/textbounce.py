"""Bounces with no machine-readable part: read the text the big receivers write.

- Gmail's plain-text "Delivery Status Notification (Failure)": "Delivery to the following
  recipient failed permanently: ... The error that the other server returned was: 550 ...",
  and its newer "Your message wasn't delivered to X ... The response from the remote
  server was: ...".
- Exchange and Office 365 NDRs: "Your message to X couldn't be delivered", "Delivery has
  failed to these recipients or groups: ...", then "Remote Server returned '550 5.1.10
  RESOLVER...'" or "#550 5.1.1 RESOLVER.ADR.RecipNotFound ##".
- qmail-style texts, Yahoo's among them: "<user@host>:" on a line of its own, then the
  remote reply ("554: delivery error: dd This user doesn't have a yahoo.com account").

Each rule is a phrase, not a whole layout, so a rewording of the rest still parses.
What none of them recognises is not a bounce (``Unparsed``): guessing would mark a
delivered recipient bounced on the strength of an auto-reply.
"""

from __future__ import annotations

import re
from email.message import Message

from postline.inbound.mime import addresses_in, body_text, header
from postline.inbound.report import Entry, Kind, Report

_FLAGS = re.IGNORECASE | re.MULTILINE
_APOSTROPHE = "['\u2019]"

#: (shape, pattern): group 1 holds the text where the failed addresses are.
_RECIPIENTS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "gmail",
        re.compile(
            r"delivery to the following recipients? (?:failed permanently|has been delayed):"
            r"\s*\n((?:[ \t]*\S+@\S+[ \t]*\n?)+)",
            _FLAGS,
        ),
    ),
    (
        "gmail",
        re.compile(rf"your message wasn{_APOSTROPHE}?t delivered to (\S+@\S+)", _FLAGS),
    ),
    (
        "exchange",
        re.compile(rf"your message to (\S+@\S+) couldn{_APOSTROPHE}?t be delivered", _FLAGS),
    ),
    (
        "exchange",
        re.compile(
            r"delivery has failed to these recipients or groups:\s*\n((?:.*\n){1,3})", _FLAGS
        ),
    ),
    ("qmail", re.compile(r"^[ \t]*<(\S+@[^\s>]+)>:[ \t]*$", _FLAGS)),
    # Postfix's and Exim's human parts: "<user@host>: host mx said: 550 ...".
    ("mta", re.compile(r"^[ \t]*<(\S+@[^\s>]+)>:? .*(?:said|refused|rejected)", _FLAGS)),
)

#: The remote reply, by how the shapes above introduce it; group 1 is the reply.
_REPLY_INTROS = re.compile(
    r"(?:the error that the other server returned was|"
    r"the response from the remote server was|"
    r"remote server returned|"
    r"the following message to <\S+> was undeliverable|"
    r"diagnostic information for administrators)"
    r"[:\s]*['\"]?([^\n]*(?:\n[^\n]+){0,3})",
    re.IGNORECASE,
)
#: A reply line: code then (usually) an enhanced code, as "550 5.1.1", "550-5.1.1",
#: "#550 5.1.1", "554:" or "5.1.1".
_REPLY = re.compile(
    r"(?<![\w.])#?(?:([45]\d\d)[ \t\-:]+)?#?([45]\.\d{1,3}\.\d{1,3})(?![\w.])[ \t]*([^\n]*)"
    r"|^[ \t]*#?([45]\d\d)[:\- ][ \t]*([^\n]*)",
    re.MULTILINE,
)
_DELAYED = re.compile(
    r"has been delayed|will (?:retry|keep trying|try again)|not yet been delivered|"
    r"delivery (?:is )?delayed|temporary failure",
    re.IGNORECASE,
)
_SUBJECTS = re.compile(
    r"delivery status notification|undeliverable|undelivered mail|failure notice|"
    r"mail delivery (?:failed|failure|subsystem)|returned mail|delivery failure|non.?delivery",
    re.IGNORECASE,
)


def _recipients(text: str) -> tuple[str | None, list[str]]:
    for shape, pattern in _RECIPIENTS:
        found: list[str] = []
        for match in pattern.finditer(text):
            found += [a for a in addresses_in(match.group(1)) if a not in found]
        if found:
            return shape, found
    return None, []


def _reply(text: str) -> tuple[int | None, str | None, str | None]:
    """(code, enhanced code, the reply as one line) of the remote reply the text quotes."""
    intro = _REPLY_INTROS.search(text)
    for where in ([intro.group(1)] if intro else []) + [text]:
        match = _REPLY.search(where)
        if match is None:
            continue
        if match.group(2) is not None:
            code = int(match.group(1)) if match.group(1) else None
            line = " ".join(f"{match.group(1) or ''} {match.group(2)} {match.group(3)}".split())
            return code, match.group(2), line.strip("'\"# ")
        line = " ".join(f"{match.group(4)} {match.group(5)}".split())
        return int(match.group(4)), None, line.strip("'\"# ")
    return None, None, None


def parse_text_bounce(message: Message) -> Report | None:
    """The report a human-readable bounce makes, or None when it reads as none."""
    text = body_text(message).replace("\r\n", "\n")
    shape, addresses = _recipients(text)
    code, status, line = _reply(text)
    subject = header(message, "Subject") or ""
    if shape is None and not (_SUBJECTS.search(subject) and line is not None):
        return None
    delayed = (code is not None and code < 500) or (status or "5").startswith("4")
    if _DELAYED.search(text) and code is None and status is None:
        delayed = True
    action = "delayed" if delayed else "failed"
    entries = [
        Entry(addresses=(a,), action=action, status=status, smtp_code=code, diagnostic=line)
        for a in addresses
    ] or [Entry(addresses=(), action=action, status=status, smtp_code=code, diagnostic=line)]
    message_id = re.search(r"^\s*message-id:[ \t]*(<[^>\s]+>)", text, _FLAGS)
    return Report(
        kind=Kind.BOUNCE,
        shape=shape or "text",
        entries=tuple(entries),
        original_message_id=message_id.group(1) if message_id else None,
    )
