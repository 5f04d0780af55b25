"""Apply tracking to an email's content before it is built and signed.

Only what was asked changes: with nothing asked, :func:`apply` returns the content
it was given, so the bytes sent are those of an untracked build. Clicks rewrite the
``href`` of each ``<a>`` in the HTML part whose target is http(s); the text part is
left as it is (a plain-text reader sees the real address, and a rewritten one looks
like phishing). Opens add a 1x1 image at the end of the HTML body. Unsubscribe adds
``List-Unsubscribe`` and ``List-Unsubscribe-Post`` (RFC 8058).

A tracked email is built once per recipient (``postline.accept``), each copy with a
:class:`Linker` for its recipient, so every token names who it was sent to
(docs/API.md, "Tracking"). It runs in the compose pool, with the build.
"""

from __future__ import annotations

import dataclasses
import html
import re
from dataclasses import dataclass

from postline.message import Content
from postline.tracking.tokens import Kind, Token, Tokens

_ANCHOR_HREF = re.compile(
    r"""(<a\s(?:[^>]*?\s)?href\s*=\s*)("([^"]*)"|'([^']*)')""", re.IGNORECASE | re.DOTALL
)
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)


@dataclass(frozen=True)
class Tracking:
    """What one email asked for (its own ``track`` over its domain's defaults)."""

    opens: bool = False
    clicks: bool = False
    unsubscribe: bool = False

    @property
    def any(self) -> bool:
        return self.opens or self.clicks or self.unsubscribe


@dataclass(frozen=True)
class Linker:
    """Makes the URLs of one email's tracking."""

    tokens: Tokens
    base: str
    email_id: str
    recipient: str

    def url(self, kind: Kind, target: str = "") -> str:
        token = self.tokens.make(Token(kind, self.email_id, self.recipient, target))
        return f"{self.base}/t/{kind}/{token}"


def _rewrite_links(body: str, linker: Linker) -> str:
    def replace(match: re.Match[str]) -> str:
        raw = match.group(3) if match.group(3) is not None else match.group(4)
        target = html.unescape(raw).strip()
        if not target.lower().startswith(("http://", "https://")):
            return match.group(0)
        return f'{match.group(1)}"{linker.url("c", target)}"'

    return _ANCHOR_HREF.sub(replace, body)


def _add_pixel(body: str, linker: Linker) -> str:
    pixel = f'<img src="{linker.url("o")}" width="1" height="1" alt="" style="border:0">'
    ends = list(_BODY_END.finditer(body))
    if not ends:
        return body + pixel
    at = ends[-1].start()
    return body[:at] + pixel + body[at:]


def apply(content: Content, tracking: Tracking, linker: Linker) -> Content:
    """``content`` with the tracking asked for; ``content`` itself when none is."""
    if not tracking.any:
        return content
    body = content.html
    if body is not None and tracking.clicks:
        body = _rewrite_links(body, linker)
    if body is not None and tracking.opens:
        body = _add_pixel(body, linker)
    headers = content.headers
    if tracking.unsubscribe:
        headers = {
            **headers,
            "List-Unsubscribe": f"<{linker.url('u')}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        }
    return dataclasses.replace(content, html=body, headers=headers)
