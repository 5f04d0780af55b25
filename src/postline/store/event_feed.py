"""The event feed: every event in the order a reader can rely on (GET /v1/events).

An event's id is made before its transaction commits, so two writers can commit
out of id order: a reader that paged by id past the later one would never see the
earlier. The feed therefore hands out its own positions, after the events have
committed, in one serialised step (``stamp``): the counter row is locked first, so
two stampers take turns, and each turn numbers only committed events, above every
number given before. A reader paging by position misses nothing, whatever the
topology; the positions live in the database, so a cursor survives restarts.

Stamping is done by the readers (the feed answers what has committed when it is
asked) a bounded batch at a time, and by housekeeping, so that nothing piles up.
The same step adds each event to ``event_counts`` (GET /v1/stats): counted when it
is numbered, an event counts exactly once, and no statistic scans the send log.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from postline.model import EventType
from postline.store.schema import email_recipients, event_counts, event_feed, events

#: ``Database.write``: each call a write transaction.
WriteTransactions = Callable[[], AbstractAsyncContextManager[AsyncConnection]]

#: Events numbered per turn; a reader far behind gets its page from the first turns and
#: finds the rest numbered on its next call (``has_more`` says there is a rest).
STAMP_BATCH = 1000
#: The events the feed lists: an email's, and mail an inbound route took (no email of
#: Postline's); not the endpoint tests of ``POST /v1/webhooks/{id}/test``.
_IN_FEED = or_(events.c.email_id.is_not(None), events.c.type == str(EventType.RECEIVED))


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
    # Acceptance writes one event per recipient, numbered 1..n within its email; every
    # later event of the email comes after them. So an event is an acceptance's when its
    # number is at most the email's recipient count.
    recipient_count = (
        select(func.count())
        .where(email_recipients.c.email_id == events.c.email_id)
        .scalar_subquery()
    )
    waiting = (
        select(
            events.c.id,
            events.c.type,
            events.c.domain_id,
            events.c.created_at,
            events.c.payload,
            (events.c.sequence <= recipient_count).label("at_acceptance"),
        )
        .where(events.c.feed_position.is_(None), _IN_FEED)
        .order_by(events.c.id)
        .limit(limit)
    )
    rows = (await conn.execute(waiting)).all()
    if not rows:
        return 0
    numbered = [{"event": row.id, "position": last + n} for n, row in enumerate(rows, 1)]
    await conn.execute(
        update(events)
        .where(events.c.id == bindparam("event"))
        .values(feed_position=bindparam("position")),
        numbered,
    )
    await conn.execute(
        update(event_feed).where(event_feed.c.id == 1).values(last_position=last + len(rows))
    )
    await _count(conn, rows)
    return len(rows)


async def stamp_all(conn_factory: WriteTransactions, turns: int = 1000) -> int:
    """Number every waiting event, a turn (one transaction) at a time; how many."""
    total = 0
    for _ in range(turns):
        async with conn_factory() as conn:
            numbered = await stamp(conn)
        total += numbered
        if numbered < STAMP_BATCH:
            break
    return total


def count_names(event_type: str, payload: dict[str, Any], at_acceptance: bool) -> list[str]:
    """The counters one event adds to: its type without ``email.``; ``accepted`` for
    each recipient's event of its acceptance (queued, or suppressed at once); for a
    bounce also ``bounced_<type>``."""
    name = event_type.removeprefix("email.")
    names = [name, "accepted"] if at_acceptance else [name]
    if name == "bounced":
        bounce_type = (payload.get("data") or {}).get("bounce_type") or "undetermined"
        names.append(f"bounced_{bounce_type}")
    return names


async def _count(conn: AsyncConnection, rows: Sequence[Any]) -> None:
    """Add the numbered events to ``event_counts``, in the transaction that numbered them:
    an event counts exactly when it gets its place in the feed, which is once."""
    counts: Counter[tuple[str, datetime, str]] = Counter()
    for row in rows:
        hour = row.created_at.replace(minute=0, second=0, microsecond=0)
        for name in count_names(row.type, row.payload or {}, bool(row.at_acceptance)):
            counts[(row.domain_id or "", hour, name)] += 1
    if not counts:
        return
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    values = [
        {"domain_id": domain_id, "hour": hour, "name": name, "count": n}
        for (domain_id, hour, name), n in counts.items()
    ]
    statement = insert(event_counts)
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=["domain_id", "hour", "name"],
            set_={"count": event_counts.c.count + statement.excluded.count},
        ),
        values,
    )


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
    waiting = select(events.c.id).where(events.c.feed_position.is_(None), _IN_FEED).limit(1)
    return (await conn.execute(waiting)).first() is not None


async def counts_between(
    conn: AsyncConnection, domain_id: str | None, start: datetime, end: datetime
) -> list[tuple[datetime, str, int]]:
    """(hour, name, count) of the hours in [start, end), summed over domains unless one
    is named."""
    total = func.sum(event_counts.c.count)
    statement = (
        select(event_counts.c.hour, event_counts.c.name, total)
        .where(event_counts.c.hour >= start, event_counts.c.hour < end)
        .group_by(event_counts.c.hour, event_counts.c.name)
    )
    if domain_id is not None:
        statement = statement.where(event_counts.c.domain_id == domain_id)
    return [(hour, name, int(count)) for hour, name, count in await conn.execute(statement)]
