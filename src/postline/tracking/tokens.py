"""The signed tokens of tracked links, the open pixel and the unsubscribe link.

A token carries what it is about in the clear (kind, email id, recipient address and,
for a click, the URL) and an HMAC of all of it under a key derived from the secret
key (``SecretBox.derive``), as the VERP return path is signed. Nothing is stored per
link: the redirect goes to the URL the token names, and only a token Postline made
checks, so a forged or altered one is a 404, never an open redirect.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Literal

from postline.store.sealing import SecretBox

_PURPOSE = "tracking"
#: 128 bits of signature: the token is in a URL, not an address, so length is cheap.
_MAC_BYTES = 16

Kind = Literal["o", "c", "u"]
KINDS: tuple[Kind, ...] = ("o", "c", "u")


@dataclass(frozen=True)
class Token:
    """What a checked token names. ``recipient``: the address its copy was sent to
    (empty only in tokens made before each recipient had a copy of its own, when an
    email to several shared one body); ``url``: a click's target."""

    kind: Kind
    email_id: str
    recipient: str
    url: str = ""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Tokens:
    """Makes and checks tokens; without a key (a store opened without a secret key)
    it makes none and checks none."""

    def __init__(self, key: bytes | None) -> None:
        self._key = key

    @classmethod
    def of(cls, box: SecretBox | None) -> Tokens:
        return cls(box.derive(_PURPOSE) if box is not None else None)

    @property
    def enabled(self) -> bool:
        return self._key is not None

    def _mac(self, body: bytes) -> bytes:
        assert self._key is not None
        return hmac.new(self._key, body, hashlib.sha256).digest()[:_MAC_BYTES]

    def make(self, token: Token) -> str:
        fields = [token.kind, token.email_id, token.recipient]
        if token.kind == "c":
            fields.append(token.url)
        body = json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode()
        return f"{_b64(body)}.{_b64(self._mac(body))}"

    def check(self, text: str, kind: Kind) -> Token | None:
        """The token ``text`` names if Postline made it for ``kind``; None otherwise."""
        if self._key is None or len(text) > 8192:
            return None
        body_part, _, mac_part = text.partition(".")
        try:
            body = _unb64(body_part)
        except ValueError:
            return None
        # Compared as text, and the body re-encoded: base64's last character carries
        # spare bits, so a changed last character can decode to the same bytes, and an
        # altered token must still be refused.
        expected = _b64(self._mac(body)).encode()
        if _b64(body) != body_part or not hmac.compare_digest(mac_part.encode(), expected):
            return None
        try:
            fields = json.loads(body)
        except ValueError:
            return None
        if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
            return None
        if len(fields) < 3 or fields[0] != kind:
            return None
        url = fields[3] if kind == "c" and len(fields) == 4 else ""
        return Token(kind, fields[1], fields[2], url)
