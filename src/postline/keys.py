"""API keys: created once (the secret is shown only then), looked up by hash."""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from datetime import timedelta

from postline.domains import DomainError, normalize_domain
from postline.ids import hash_api_key, new_api_key, new_id
from postline.store import domains as domain_store
from postline.store import keys as key_store
from postline.store.db import Database
from postline.store.types import utcnow

log = logging.getLogger("postline.keys")

#: How stale a key's ``last_used_at`` may be: one write per key and minute, not per request.
LAST_USED_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True)
class Principal:
    """Who is calling: an API key, possibly scoped to one sending domain."""

    key_id: str
    name: str
    domain_id: str | None
    domain_name: str | None

    @property
    def is_admin(self) -> bool:
        return self.domain_id is None

    def may_see(self, domain_id: str) -> bool:
        return self.domain_id is None or self.domain_id == domain_id


@dataclass(frozen=True)
class CreatedKey:
    id: str
    name: str
    key: str
    domain: str | None


async def create_key(db: Database, name: str, domain: str | None = None) -> CreatedKey:
    """Create a key; raise DomainError if the scope names an unknown domain."""
    if not name.strip():
        raise ValueError("a key needs a name")
    secret = new_api_key()
    async with db.write() as conn:
        domain_id = None
        domain_name = None
        if domain:
            row = await domain_store.get_domain_by_name(conn, normalize_domain(domain))
            if row is None:
                raise DomainError(f"unknown domain {domain}")
            domain_id, domain_name = row.id, row.name
        key_id = new_id("key_")
        await key_store.insert_key(
            conn,
            key_id=key_id,
            name=name.strip(),
            prefix=secret[:10],
            key_hash=hash_api_key(secret),
            domain_id=domain_id,
        )
    return CreatedKey(id=key_id, name=name.strip(), key=secret, domain=domain_name)


#: How many candidates a prefix lookup counts before it says "more than".
AMBIGUITY_COUNTED = 20


class AmbiguousKey(Exception):
    """An id prefix that more than one active key starts with."""

    def __init__(self, prefix: str, count: int) -> None:
        how_many = f"more than {AMBIGUITY_COUNTED}" if count > AMBIGUITY_COUNTED else str(count)
        super().__init__(f"{prefix!r} is the start of {how_many} active keys; give more of the id")
        self.count = count


async def revoke_by_prefix(db: Database, id_or_prefix: str) -> str | None:
    """Revoke the active key whose id is, or starts with, ``id_or_prefix``; return its
    id, or None when no active key matches. Operators copy ids from a table, so the
    first characters that tell a key apart are enough; several matches revoke nothing
    (AmbiguousKey)."""
    if not id_or_prefix:
        return None
    async with db.write() as conn:
        found = await key_store.active_ids_starting_with(conn, id_or_prefix, AMBIGUITY_COUNTED + 1)
        if id_or_prefix in found:
            found = [id_or_prefix]
        if len(found) > 1:
            raise AmbiguousKey(id_or_prefix, len(found))
        if not found or not await key_store.revoke_key(conn, found[0]):
            return None
    return found[0]


async def authenticate(db: Database, secret: str) -> Principal | None:
    """The principal for a presented key, or None (unknown or revoked)."""
    digest = hash_api_key(secret)
    async with db.read() as conn:
        row = await key_store.find_active_key(conn, digest)
    if row is None or not hmac.compare_digest(row.key_hash, digest):
        return None
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION:
        try:
            async with db.write() as conn:
                await key_store.touch_key(conn, row.id, now, LAST_USED_RESOLUTION)
        except Exception as exc:  # bookkeeping: never the reason a request fails
            log.warning("recording the use of key_id=%s failed: %s", row.id, type(exc).__name__)
    return Principal(
        key_id=row.id, name=row.name, domain_id=row.domain_id, domain_name=row.domain_name
    )
