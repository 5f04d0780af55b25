"""Named queries for the suppression list (per sending domain)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from postline.store.records import Record
from postline.store.schema import domains, suppressions


@dataclass(frozen=True, slots=True)
class Suppression(Record):
    """An address one sending domain never sends to, and why."""

    id: str
    domain_id: str
    domain_name: str
    address: str
    reason: str  # hard_bounce | complaint | manual | unsubscribe
    source_email_id: str | None  # the email whose bounce or complaint caused it
    detail: str | None
    created_at: datetime
    expires_at: datetime | None  # None: for ever


_WITH_DOMAIN = select(suppressions, domains.c.name.label("domain_name")).select_from(
    suppressions.join(domains, suppressions.c.domain_id == domains.c.id)
)


async def add_suppression(
    conn: AsyncConnection,
    *,
    suppression_id: str,
    domain_id: str,
    address: str,
    reason: str,
    now: datetime,
    source_email_id: str | None = None,
    detail: str | None = None,
    expires_at: datetime | None = None,
) -> bool:
    """Insert unless the address is already suppressed for the domain; True if written.

    A suppression that expires (a domain-level bounce) gives way to a newer
    verdict: a later expiry, or a permanent one. A permanent one stays as it is.
    """
    values = {
        "id": suppression_id,
        "domain_id": domain_id,
        "address": address.lower(),
        "reason": reason,
        "source_email_id": source_email_id,
        "detail": detail,
        "created_at": now,
        "expires_at": expires_at,
    }
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    statement = (
        insert(suppressions)
        .values(**values)
        .on_conflict_do_update(
            index_elements=["domain_id", "address"],
            set_={
                key: values[key]
                for key in ("reason", "source_email_id", "detail", "created_at", "expires_at")
            },
            where=suppressions.c.expires_at.is_not(None)
            if expires_at is None
            else suppressions.c.expires_at < expires_at,
        )
    )
    result = await conn.execute(statement)
    return bool(result.rowcount)


async def get_suppression(conn: AsyncConnection, suppression_id: str) -> Suppression | None:
    statement = _WITH_DOMAIN.where(suppressions.c.id == suppression_id)
    return Suppression.from_optional((await conn.execute(statement)).first())


@dataclass(frozen=True)
class SuppressionFilter:
    domain_id: str | None = None
    address: str | None = None
    reason: str | None = None


async def list_suppressions(
    conn: AsyncConnection, where: SuppressionFilter, before_id: str | None, limit: int
) -> list[Suppression]:
    statement = _WITH_DOMAIN.order_by(suppressions.c.id.desc()).limit(limit)
    if before_id:
        statement = statement.where(suppressions.c.id < before_id)
    if where.domain_id:
        statement = statement.where(suppressions.c.domain_id == where.domain_id)
    if where.address:
        statement = statement.where(suppressions.c.address == where.address.lower())
    if where.reason:
        statement = statement.where(suppressions.c.reason == where.reason)
    return [Suppression.from_row(row) for row in await conn.execute(statement)]


async def delete_suppression(conn: AsyncConnection, suppression_id: str) -> None:
    await conn.execute(delete(suppressions).where(suppressions.c.id == suppression_id))
