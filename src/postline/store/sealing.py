"""Secrets at rest: DKIM private keys and webhook secrets, sealed with a key the
database never sees.

A copy of the database (a backup, a replica, a file left readable) must not be
enough to sign mail as a customer's domain or forge their webhooks, so those
columns hold ``enc:v1:<Fernet token>`` (AES-128-CBC with HMAC-SHA256). The key lives
outside the database: ``POSTLINE_SECRET_KEY`` or ``<data dir>/secret.key``.

The prefix tells a sealed value from a plaintext one written by a version from
before sealing: such a value is still read as is (a rolling upgrade may have an
old process writing for a while) and the upgrade step seals it at the next start.

The box travels with the database connection as an engine-wide execution option,
so every store query that reads or writes these columns finds it without each of
its callers passing a key around.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy.ext.asyncio import AsyncConnection

PREFIX = "enc:v1:"
#: The execution option under which a Database hands its box to store queries.
OPTION = "postline_secret_box"


class SecretKeyError(Exception):
    """The key is missing, malformed, or not the one the stored secrets were sealed with."""


def check_key(text: str) -> bytes:
    """The key as bytes, or ValueError when it is not urlsafe base64 of 32 bytes."""
    wrong = "expected 32 bytes in urlsafe base64 (44 characters)"
    try:
        raw = base64.urlsafe_b64decode(text.strip().encode("ascii"))
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise ValueError(wrong) from None
    if len(raw) != 32:
        raise ValueError(wrong)
    return text.strip().encode("ascii")


def new_key() -> str:
    return Fernet.generate_key().decode("ascii")


def is_sealed(value: str) -> bool:
    return value.startswith(PREFIX)


class SecretBox:
    """Seals and opens one column value; ``where`` names the key in error messages."""

    def __init__(self, key: str, where: str) -> None:
        raw = check_key(key)
        self._fernet = Fernet(raw)
        self._derive_from = raw
        self.where = where

    def derive(self, purpose: str) -> bytes:
        """A key of its own for ``purpose`` (e.g. the return path's HMAC), from the secret key.

        One secret to keep and back up, yet a value signed for one purpose can never
        be replayed as another's, nor reveal anything about the sealing key.
        """
        return hmac.new(self._derive_from, f"postline:{purpose}".encode(), hashlib.sha256).digest()

    def seal(self, value: str) -> str:
        if is_sealed(value):
            return value  # already sealed (a value read back and written again)
        return PREFIX + self._fernet.encrypt(value.encode("utf-8")).decode("ascii")

    def open(self, value: str) -> str:
        if not is_sealed(value):
            return value  # plaintext from before sealing: the upgrade step seals it
        try:
            return self._fernet.decrypt(value[len(PREFIX) :].encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeError):
            raise SecretKeyError(
                f"the secret key does not decrypt the stored secrets ({self.where})"
            ) from None


def box_of(conn: AsyncConnection) -> SecretBox:
    """The box of the Database this connection came from."""
    box = conn.sync_connection.get_execution_options().get(OPTION) if conn.sync_connection else None
    if not isinstance(box, SecretBox):
        # Never write a secret in the clear for want of a key.
        raise SecretKeyError("no secret key: this database handle was opened without one")
    return box


def seal(conn: AsyncConnection, value: str | None) -> str | None:
    return None if value is None else box_of(conn).seal(value)


def unseal(conn: AsyncConnection, value: str | None) -> str | None:
    if value is None or not is_sealed(value):
        return value
    return box_of(conn).open(value)
