"""API keys: created once (the secret is shown only then), looked up by hash."""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from postline.domains import DomainError, normalize_domain
from postline.ids import hash_api_key, new_api_key, new_id
from postline.store import domains as domain_store
from postline.store import keys as key_store
from postline.store.db import Database
from postline.store.gathering import GroupRead
from postline.store.types import utcnow

log = logging.getLogger("postline.keys")

#: What a key may do. Each route of the API needs one (``api.auth.needs``); a key has
#: every scope unless it was made with fewer. ``admin`` is the domains, keys and queue
#: operations, which also need an unscoped key unless they touch the key's own domain.
SCOPES = ("send", "read", "templates", "webhooks", "suppressions", "stats", "admin")
ALL_SCOPES = frozenset(SCOPES)

#: How stale a key's ``last_used_at`` may be: one write per key and minute, not per request.
LAST_USED_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True)
class Principal:
    """Who is calling: an API key, possibly scoped to one sending domain."""

    key_id: str
    name: str
    domain_id: str | None
    domain_name: str | None
    scopes: frozenset[str] = ALL_SCOPES

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
    scopes: list[str]
    expires_at: datetime | None


async def create_key(
    db: Database,
    name: str,
    domain: str | None = None,
    scopes: list[str] | None = None,
    expires_at: datetime | None = None,
) -> CreatedKey:
    """Create a key; raise DomainError if the scope names an unknown domain, ValueError
    for a bad name, scope or expiry."""
    if not name.strip():
        raise ValueError("a key needs a name")
    scopes = check_scopes(scopes)
    if expires_at is not None and expires_at <= utcnow():
        raise ValueError("expires_at is in the past: a key must be usable when made")
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
            scopes=None if set(scopes) == ALL_SCOPES else scopes,
            expires_at=expires_at,
        )
    return CreatedKey(
        id=key_id,
        name=name.strip(),
        key=secret,
        domain=domain_name,
        scopes=scopes,
        expires_at=expires_at,
    )


def check_scopes(scopes: list[str] | None) -> list[str]:
    """The scopes asked for, in the documented order; every scope when None."""
    if scopes is None:
        return list(SCOPES)
    unknown = sorted(set(scopes) - ALL_SCOPES)
    if unknown:
        raise ValueError(f"unknown scope {unknown[0]!r}: one of {', '.join(SCOPES)}")
    if not scopes:
        raise ValueError("a key needs at least one scope")
    return [scope for scope in SCOPES if scope in scopes]


def key_scopes(stored: list[str] | None) -> frozenset[str]:
    return ALL_SCOPES if stored is None else frozenset(stored) & ALL_SCOPES


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


class Authenticator:
    """Turns the keys callers present into principals.

    Keys presented while a lookup runs are looked up together when it ends, in one
    statement (``store.gathering.GroupRead``): under load each request's own lookup
    was a fifth of the API process's samples (32 clients sending one email each).
    A lookup starts after the key was presented, so a key works until the first lookup
    after its revocation committed, as when each request read it alone.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self._lookups: GroupRead[str, key_store.ApiKey | None] = GroupRead(
            self._look_up, name="API key lookups"
        )
        #: Keys whose use this process is recording now: the callers of one shared
        #: lookup all read the same stale ``last_used_at``, and each would otherwise
        #: queue the same write for SQLite's one writer.
        self._recording: set[str] = set()

    async def authenticate(self, secret: str) -> Principal | None:
        """The principal for a presented key, or None (unknown, revoked or expired)."""
        digest = hash_api_key(secret)
        row = await self._lookups.get(digest)
        if row is None or not hmac.compare_digest(row.key_hash, digest):
            return None
        now = utcnow()
        if row.expires_at is not None and row.expires_at <= now:
            return None
        stale = row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION
        if stale and row.id not in self._recording:
            self._recording.add(row.id)
            try:
                async with self.db.write() as conn:
                    await key_store.touch_key(conn, row.id, now, LAST_USED_RESOLUTION)
            except Exception as exc:  # bookkeeping: never the reason a request fails
                log.warning("recording the use of key_id=%s failed: %s", row.id, type(exc).__name__)
            finally:
                self._recording.discard(row.id)
        return principal_of(row)

    async def _look_up(self, digests: list[str]) -> list[key_store.ApiKey | None]:
        async with self.db.lookup() as conn:
            found = await key_store.find_active_keys(conn, digests)
        return [found.get(digest) for digest in digests]


def principal_of(row: key_store.ApiKey) -> Principal:
    """The caller an active key stands for, over the API or a dashboard session."""
    return Principal(
        key_id=row.id,
        name=row.name,
        domain_id=row.domain_id,
        domain_name=row.domain_name,
        scopes=key_scopes(row.scopes),
    )
