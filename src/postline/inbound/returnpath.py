"""The VERP return path of outgoing mail: ``bounces+<email_id>-<token>@bounces.<domain>``.

A late bounce or a complaint is mailed to the envelope sender, so the address itself says
which email it is about; the recipient comes from the report (its Final-Recipient), so
every recipient of one SMTP transaction still shares one envelope sender.

The token is an HMAC of the email id and the domain under a key derived from the secret
key: the inbound listener accepts a return path only when it checks, so nobody can make
Postline take mail for addresses it never sent from, nor mark someone else's email
bounced by guessing ids (a forged token is refused at RCPT).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass

from postline.store.sealing import SecretBox

LOCAL_PREFIX = "bounces+"
DOMAIN_PREFIX = "bounces."
#: 80 bits, as 16 lower-case base32 characters: local parts are often lower-cased by
#: the servers a report passes through, so the token must survive that.
_TOKEN_BYTES = 10
_PURPOSE = "return-path"
_EMAIL_ID = re.compile(r"em_[0-9a-z]{26}")


@dataclass(frozen=True)
class ReturnPath:
    """A return path that checked: the email it belongs to and the sending domain."""

    email_id: str
    domain: str


class ReturnPaths:
    """Makes and checks return paths; without a key (a store opened without a secret key,
    in tools and some tests) it makes the untokened form, which the listener refuses."""

    def __init__(self, key: bytes | None) -> None:
        self._key = key

    @classmethod
    def of(cls, box: SecretBox | None) -> ReturnPaths:
        return cls(box.derive(_PURPOSE) if box is not None else None)

    def _token(self, email_id: str, domain: str) -> str:
        assert self._key is not None
        message = f"{email_id}@{domain}".lower().encode()
        digest = hmac.new(self._key, message, hashlib.sha256).digest()[:_TOKEN_BYTES]
        return base64.b32encode(digest).decode("ascii").lower()

    def address(self, email_id: str, domain: str) -> str:
        """The envelope sender for ``email_id`` sent from ``domain``."""
        if self._key is None:
            return f"{LOCAL_PREFIX}{email_id}@{DOMAIN_PREFIX}{domain}"
        token = self._token(email_id, domain)
        return f"{LOCAL_PREFIX}{email_id}-{token}@{DOMAIN_PREFIX}{domain}"

    def looks_like(self, address: str) -> bool:
        """Whether ``address`` has the return path's shape, whatever its token."""
        local, _, domain = address.strip().strip("<>").lower().rpartition("@")
        return local.startswith(LOCAL_PREFIX) and domain.startswith(DOMAIN_PREFIX)

    def check(self, address: str) -> ReturnPath | None:
        """The email a return path names, or None unless its shape and token are right.

        Compared in constant time; case-insensitive, as the whole address may have been
        lower-cased (or upper-cased) on its way back.
        """
        if self._key is None:
            return None
        local, _, domain = address.strip().strip("<>").lower().rpartition("@")
        if not local.startswith(LOCAL_PREFIX) or not domain.startswith(DOMAIN_PREFIX):
            return None
        email_id, _, token = local[len(LOCAL_PREFIX) :].rpartition("-")
        sending_domain = domain[len(DOMAIN_PREFIX) :]
        if not _EMAIL_ID.fullmatch(email_id) or not sending_domain:
            return None
        # As bytes: compare_digest refuses str with non-ASCII characters (an SMTPUTF8
        # recipient) with a TypeError instead of saying no.
        expected = self._token(email_id, sending_domain).encode()
        if not hmac.compare_digest(token.encode(), expected):
            return None
        return ReturnPath(email_id, sending_domain)
