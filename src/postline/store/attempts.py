"""Named queries over ``delivery_attempts`` that read it as history, not as a timeline."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from postline.model import AttemptScope, RecipientStatus
from postline.store.records import Record
from postline.store.schema import delivery_attempts


@dataclass(frozen=True, slots=True)
class AttemptRow(Record):
    """One recipient's row of one SMTP transaction, as the breaker warm-up reads it.

    Several rows share ``attempt_id`` (one per recipient of the transaction).
    ``scope`` says whether the outcome is about the destination at all
    (:class:`~postline.model.AttemptScope`). It lives in the store, not in
    ``delivery/``, so the store never imports upwards.
    """

    destination: str
    attempt_id: str
    scope: AttemptScope
    status: RecipientStatus
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
    return [AttemptRow.from_row(row) for row in await conn.execute(statement)]


async def waited_since(
    conn: AsyncConnection, recipient_ids: Sequence[str], since: datetime
) -> set[str]:
    """Those of ``recipient_ids`` with a breaker wait on their timeline at or after ``since``.

    A recipient parked again in the same opening of a breaker (``since``, when
    it opened) already has its row and its ``email.deferred``: it gets no other.
    """
    if not recipient_ids:
        return set()
    c = delivery_attempts.c
    statement = (
        select(c.recipient_id)
        .where(
            c.recipient_id.in_(recipient_ids),
            c.scope == AttemptScope.BREAKER,
            c.created_at >= since,
        )
        .distinct()
    )
    return {row.recipient_id for row in await conn.execute(statement)}
