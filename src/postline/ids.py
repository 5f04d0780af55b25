"""Time-ordered opaque identifiers and API key material."""

from __future__ import annotations

import hashlib
import secrets
import time

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


def new_id(prefix: str = "", at: float | None = None) -> str:
    """A ULID-style id: 48 bits of milliseconds then 80 random bits, base32.

    Time-ordered so that ``ORDER BY id`` is creation order, which is what
    cursor pagination of the send log relies on. ``at``: the epoch seconds to
    stamp instead of now (tools that write history).
    """
    moment = time.time() if at is None else at
    return prefix + _encode((int(moment * 1000) << 80) | secrets.randbits(80))


def _encode(value: int) -> str:
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


KEY_PREFIX = "pl_"


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    """SHA-256 of the key: keys are long random tokens, so no slow hash is needed."""
    return hashlib.sha256(key.encode()).hexdigest()
