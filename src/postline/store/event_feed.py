"""The event feed: every event in the order a reader can rely on (GET /v1/events).

An event's id is made before its transaction commits, so two writers can commit
out of id order: a reader that paged by id past the later one would never see the
earlier. The feed therefore hands out its own positions, after the events have
committed, in one serialised step (``stamp``): the counter row is locked first, so
two stampers take turns, and each turn numbers only committed events, above every
number given before. A reader paging by position misses nothing, whatever the
topology; the positions live in the database, so a cursor survives restarts.

Stamping is done by the readers (the feed answers what has committed when it is
asked) a bounded batch at a time: a feed nobody reads costs an indexed NULL per
event and nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from postline.store.schema import event_feed, events

#: Events numbered per turn; a reader far behind gets its page from the first turns and
#: finds the rest numbered on its next call (``has_more`` says there is a rest).
STAMP_BATCH = 1000


@dataclass(frozen=True, slots=True)
class FeedEvent:
    position: int
    id: str
    type: str
    email_id: str | None
    domain_id: str | None
    created_at: datetime
    payload: dict[str, Any]


async def stamp(conn: AsyncConnection, limit: int = STAMP_BATCH) -> int:
    """Number up to ``limit`` committed events that have no position yet, oldest id
    first; how many were numbered. Call inside a write transaction."""
    counter = select(event_feed.c.last_position).where(event_feed.c.id == 1).with_for_update()
    last = (await conn.execute(counter)).scalar_one()
    waiting = (
        select(events.c.id)
        .where(events.c.feed_position.is_(None), events.c.email_id.is_not(None))
        .order_by(events.c.id)
        .limit(limit)
    )
    ids = (await conn.execute(waiting)).scalars().all()
    if not ids:
        return 0
    numbered = [{"event": event_id, "position": last + n} for n, event_id in enumerate(ids, 1)]
    await conn.execute(
        update(events)
        .where(events.c.id == bindparam("event"))
        .values(feed_position=bindparam("position")),
        numbered,
    )
    await conn.execute(
        update(event_feed).where(event_feed.c.id == 1).values(last_position=last + len(ids))
    )
    return len(ids)


async def read(
    conn: AsyncConnection,
    *,
    after: int,
    types: Sequence[str],
    domain_id: str | None,
    limit: int,
) -> list[FeedEvent]:
    """Up to ``limit`` numbered events after position ``after``, in order; only the
    domain's when ``domain_id`` is given, only of ``types`` when any are given."""
    statement = (
        select(
            events.c.feed_position,
            events.c.id,
            events.c.type,
            events.c.email_id,
            events.c.domain_id,
            events.c.created_at,
            events.c.payload,
        )
        .where(events.c.feed_position > after)
        .order_by(events.c.feed_position)
        .limit(limit)
    )
    if types:
        statement = statement.where(events.c.type.in_(types))
    if domain_id is not None:
        statement = statement.where(events.c.domain_id == domain_id)
    return [FeedEvent(*row) for row in await conn.execute(statement)]


async def unnumbered(conn: AsyncConnection) -> bool:
    """Whether committed events wait for a position (a reader far behind)."""
    waiting = (
        select(events.c.id)
        .where(events.c.feed_position.is_(None), events.c.email_id.is_not(None))
        .limit(1)
    )
    return (await conn.execute(waiting)).first() is not None
