"""Time-ordered opaque identifiers and API key material."""

from __future__ import annotations

import hashlib
import secrets
import time

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


def new_id(prefix: str = "") -> str:
    """A ULID-style id: 48 bits of milliseconds then 80 random bits, base32.

    Time-ordered so that ``ORDER BY id`` is creation order, which is what
    cursor pagination of the send log relies on.
    """
    value = (int(time.time() * 1000) << 80) | secrets.randbits(80)
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return prefix + "".join(reversed(chars))


KEY_PREFIX = "pl_"


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    """SHA-256 of the key: keys are long random tokens, so no slow hash is needed."""
    return hashlib.sha256(key.encode()).hexdigest()
