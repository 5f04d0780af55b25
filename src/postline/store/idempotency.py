"""Named queries for Idempotency-Key records (24 h, per API key)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from postline.store.records import Record
from postline.store.schema import idempotency_keys as table

RETENTION = timedelta(hours=24)
#: A claim still "running" after this long belongs to a process that died.
ABANDONED = timedelta(minutes=10)


@dataclass(frozen=True, slots=True)
class IdempotencyRecord(Record):
    """A request made with an Idempotency-Key: its fingerprint and, once done, its answer."""

    scope: str  # the API key that made it: keys never see each other's records
    key: str
    request_hash: str  # a replay with another body under the same key is refused
    state: Literal["running", "done"]
    response: Any  # the JSON answered, once done
    created_at: datetime


async def find(
    conn: AsyncConnection, scope: str, key: str, now: datetime
) -> IdempotencyRecord | None:
    await conn.execute(
        delete(table).where(
            table.c.scope == scope,
            table.c.key == key,
            (table.c.created_at < now - RETENTION)
            | ((table.c.state == "running") & (table.c.created_at < now - ABANDONED)),
        )
    )
    statement = select(table).where(table.c.scope == scope, table.c.key == key)
    return IdempotencyRecord.from_optional((await conn.execute(statement)).first())


async def insert_running(
    conn: AsyncConnection, scope: str, key: str, request_hash: str, now: datetime
) -> bool:
    """Claim the key; False when a concurrent request claimed it first.

    On PostgreSQL two requests can both find no record and both insert: the second
    waits for the first's commit and then inserts nothing, instead of failing.
    """
    make = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    statement = make(table).values(
        scope=scope, key=key, request_hash=request_hash, state="running", created_at=now
    )
    result = await conn.execute(statement.on_conflict_do_nothing())
    return bool(result.rowcount)


async def complete(conn: AsyncConnection, scope: str, key: str, response: Any) -> None:
    await conn.execute(
        update(table)
        .where(table.c.scope == scope, table.c.key == key)
        .values(state="done", response=response)
    )


async def forget(conn: AsyncConnection, scope: str, key: str) -> None:
    await conn.execute(delete(table).where(table.c.scope == scope, table.c.key == key))
