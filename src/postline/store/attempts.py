"""Named queries over ``delivery_attempts`` that read it as history, not as a timeline."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from postline.store.schema import delivery_attempts


@dataclass(frozen=True)
class AttemptRow:
    """One recipient's row of one SMTP transaction, as the breaker warm-up reads it.

    Several rows share ``attempt_id`` (one per recipient of the transaction).
    ``scope`` is "transaction" (the reply decided the whole transaction: a
    connect/greeting/MAIL/DATA failure, or the DATA reply), "recipient" (a
    per-recipient RCPT reply) or "breaker" (deferred without connecting
    because the breaker was open). It lives in the store, not in
    ``delivery/``, so the store never imports upwards.
    """

    destination: str
    attempt_id: str
    scope: str
    status: str
    created_at: datetime
    response: str | None = None


async def recent_attempts(conn: AsyncConnection, since: datetime) -> list[AttemptRow]:
    """Every attempt row written at or after ``since``, oldest first.

    Ordered by ``id`` within one instant so a replay sees rows in the order
    they were written, on both stores.
    """
    c = delivery_attempts.c
    statement = (
        select(c.destination, c.attempt_id, c.scope, c.status, c.created_at, c.response)
        .where(c.created_at >= since)
        .order_by(c.created_at, c.id)
    )
    return [
        AttemptRow(
            destination=row.destination,
            attempt_id=row.attempt_id,
            scope=row.scope,
            status=row.status,
            created_at=row.created_at,
            response=row.response,
        )
        for row in await conn.execute(statement)
    ]
