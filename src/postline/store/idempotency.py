"""Named queries for Idempotency-Key records (24 h, per API key)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import delete, select, update
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
) -> None:
    await conn.execute(
        table.insert().values(
            scope=scope, key=key, request_hash=request_hash, state="running", created_at=now
        )
    )


async def complete(conn: AsyncConnection, scope: str, key: str, response: Any) -> None:
    await conn.execute(
        update(table)
        .where(table.c.scope == scope, table.c.key == key)
        .values(state="done", response=response)
    )


async def forget(conn: AsyncConnection, scope: str, key: str) -> None:
    await conn.execute(delete(table).where(table.c.scope == scope, table.c.key == key))
