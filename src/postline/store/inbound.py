"""Named queries for inbound mail that could not be applied (``inbound_unmatched``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from postline.store.records import Record
from postline.store.schema import inbound_unmatched


@dataclass(frozen=True, slots=True)
class Unmatched(Record):
    """One message the inbound listener took and could not apply, and why."""

    id: str
    received_at: datetime
    mail_from: str
    rcpt_to: str
    kind: str | None
    shape: str | None
    reason: str
    email_id: str | None
    subject: str | None
    size: int
    excerpt: str


async def add_unmatched(conn: AsyncConnection, values: dict[str, Any]) -> None:
    await conn.execute(insert(inbound_unmatched).values(**values))


async def list_unmatched(
    conn: AsyncConnection, before_id: str | None, limit: int
) -> list[Unmatched]:
    """Newest first (ids are time-ordered), ``limit`` of them from before ``before_id``."""
    statement = select(inbound_unmatched).order_by(inbound_unmatched.c.id.desc()).limit(limit)
    if before_id:
        statement = statement.where(inbound_unmatched.c.id < before_id)
    return [Unmatched.from_row(row) for row in await conn.execute(statement)]


async def delete_unmatched_before(conn: AsyncConnection, cutoff: datetime) -> int:
    """Forget what was received before ``cutoff``, as the retention purge forgets emails."""
    result = await conn.execute(
        delete(inbound_unmatched).where(inbound_unmatched.c.received_at < cutoff)
    )
    return int(result.rowcount or 0)
