"""Named queries for dashboard sessions (only the SHA-256 of a session token is stored)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncConnection

from postline.store.records import Record
from postline.store.schema import dashboard_sessions


@dataclass(frozen=True, slots=True)
class Session(Record):
    token_hash: str
    key_id: str
    csrf_token: str
    created_at: datetime
    expires_at: datetime


async def insert_session(
    conn: AsyncConnection,
    *,
    token_hash: str,
    key_id: str,
    csrf_token: str,
    now: datetime,
    expires_at: datetime,
) -> None:
    await conn.execute(
        dashboard_sessions.insert().values(
            token_hash=token_hash,
            key_id=key_id,
            csrf_token=csrf_token,
            created_at=now,
            expires_at=expires_at,
        )
    )


async def live_session(conn: AsyncConnection, token_hash: str, now: datetime) -> Session | None:
    """The session of a token hash, unless it expired: the server decides, not the cookie."""
    statement = select(dashboard_sessions).where(
        dashboard_sessions.c.token_hash == token_hash, dashboard_sessions.c.expires_at > now
    )
    return Session.from_optional((await conn.execute(statement)).first())


async def delete_session(conn: AsyncConnection, token_hash: str) -> None:
    await conn.execute(
        delete(dashboard_sessions).where(dashboard_sessions.c.token_hash == token_hash)
    )


async def delete_expired(conn: AsyncConnection, now: datetime) -> int:
    result = await conn.execute(
        delete(dashboard_sessions).where(dashboard_sessions.c.expires_at <= now)
    )
    return int(result.rowcount or 0)
