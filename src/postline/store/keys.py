"""Named queries for API keys (only their SHA-256 hashes are stored)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from postline.store.records import Record
from postline.store.schema import api_keys, domains
from postline.store.types import utcnow


@dataclass(frozen=True, slots=True)
class ApiKey(Record):
    """An API key as stored: its hash, never its secret, and the domain it is scoped to."""

    id: str
    name: str
    prefix: str  # the first characters of the secret, so an operator can tell keys apart
    key_hash: str
    domain_id: str | None  # None: an admin key, for every domain
    domain_name: str | None
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None
    scopes: list[str] | None  # None: every scope
    expires_at: datetime | None


async def insert_key(
    conn: AsyncConnection,
    *,
    key_id: str,
    name: str,
    prefix: str,
    key_hash: str,
    domain_id: str | None,
    scopes: list[str] | None = None,
    expires_at: datetime | None = None,
) -> None:
    await conn.execute(
        api_keys.insert().values(
            id=key_id,
            name=name,
            prefix=prefix,
            key_hash=key_hash,
            domain_id=domain_id,
            created_at=utcnow(),
            scopes=scopes,
            expires_at=expires_at,
        )
    )


_WITH_DOMAIN = select(api_keys, domains.c.name.label("domain_name")).select_from(
    api_keys.outerjoin(domains, api_keys.c.domain_id == domains.c.id)
)
#: Built once: every authenticated request runs one of these, and building the statement
#: and its cache key anew took 30-35 us, 3% of the API process's samples at 200 single
#: sends a second (a built statement's cache key is remembered).
_ACTIVE_BY_HASHES = _WITH_DOMAIN.where(
    api_keys.c.key_hash.in_(bindparam("key_hashes", expanding=True)),
    api_keys.c.revoked_at.is_(None),
)
_ACTIVE_BY_ID = _WITH_DOMAIN.where(
    api_keys.c.id == bindparam("key_id"), api_keys.c.revoked_at.is_(None)
)


async def find_active_keys(conn: AsyncConnection, key_hashes: list[str]) -> dict[str, ApiKey]:
    """The active keys of these hashes, by hash. The hash is the lookup key: the
    comparison happens inside the index, not in Python."""
    found = await conn.execute(_ACTIVE_BY_HASHES, {"key_hashes": sorted(set(key_hashes))})
    return {row.key_hash: ApiKey.from_row(row) for row in found}


async def get_active_key(conn: AsyncConnection, key_id: str) -> ApiKey | None:
    """An active key by id: a dashboard session stands for a key until it is revoked."""
    found = await conn.execute(_ACTIVE_BY_ID, {"key_id": key_id})
    return ApiKey.from_optional(found.first())


async def list_keys(conn: AsyncConnection) -> list[ApiKey]:
    statement = _WITH_DOMAIN.where(api_keys.c.revoked_at.is_(None)).order_by(api_keys.c.id)
    return [ApiKey.from_row(row) for row in await conn.execute(statement)]


async def count_keys(conn: AsyncConnection) -> int:
    return len(await list_keys(conn))


async def active_ids_starting_with(conn: AsyncConnection, prefix: str, limit: int) -> list[str]:
    """Ids of active keys beginning with ``prefix`` (taken literally: ``_`` and ``%`` too)."""
    statement = (
        select(api_keys.c.id)
        .where(api_keys.c.id.startswith(prefix, autoescape=True), api_keys.c.revoked_at.is_(None))
        .order_by(api_keys.c.id)
        .limit(limit)
    )
    return list((await conn.execute(statement)).scalars())


async def revoke_key(conn: AsyncConnection, key_id: str) -> bool:
    result = await conn.execute(
        update(api_keys)
        .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return bool(result.rowcount)


async def touch_key(
    conn: AsyncConnection, key_id: str, now: datetime, resolution: timedelta
) -> None:
    """Record a use, unless one within ``resolution`` is recorded (by any process) already."""
    await conn.execute(
        update(api_keys)
        .where(
            api_keys.c.id == key_id,
            api_keys.c.last_used_at.is_(None) | (api_keys.c.last_used_at < now - resolution),
        )
        .values(last_used_at=now)
    )
