"""/v1/events: the outbox as a feed to pull, for receivers that lost webhooks or have none.

Read oldest first after a cursor, scoped like the rest (a scoped key sees its
domain's events). Positions are handed out after the events committed
(store.event_feed), so paging from ``next_cursor`` misses nothing, across restarts
and on either topology.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Query

from postline.api import answers
from postline.api.auth import Caller, Svc
from postline.api.problems import Problem
from postline.api.responses import problem_responses
from postline.model import EventType
from postline.store import event_feed
from postline.store.event_feed import FeedEvent

router = APIRouter(prefix="/v1/events", tags=["events"])

_POSITION = re.compile(r"[0-9]{1,18}")
_TYPES = frozenset(str(t) for t in EventType)


def _after(cursor: str | None) -> int:
    if cursor is None:
        return 0
    if not _POSITION.fullmatch(cursor):
        message = "not a cursor of the event feed: pass next_cursor from the previous page"
        raise Problem(400, f"after: {message}", [{"field": "after", "message": message}])
    return int(cursor)


def _types(asked: list[str] | None) -> list[str]:
    """The event types asked for: repeated ``type`` parameters or one comma-separated."""
    wanted = [name.strip() for value in asked or [] for name in value.split(",")]
    if "" in wanted:
        message = "an empty event type: name one, or leave type out"
        raise Problem(422, f"type: {message}", [{"field": "type", "message": message}])
    unknown = sorted(set(wanted) - _TYPES)
    if unknown:
        message = f"unknown event type {unknown[0]}: one of {', '.join(sorted(_TYPES))}"
        raise Problem(422, f"type: {message}", [{"field": "type", "message": message}])
    return wanted


def view(row: FeedEvent) -> dict[str, Any]:
    """The webhook body of the event (docs/API.md, "The request"), with its id and cursor."""
    return {
        "object": "event",
        "id": row.id,
        "cursor": str(row.position),
        "type": row.type,
        "created_at": row.payload.get("created_at"),
        "email_id": row.email_id,
        "data": row.payload.get("data", {}),
    }


@router.get(
    "",
    summary="Every event, in order, after a cursor",
    response_model=answers.EventFeed,
    responses=problem_responses(400, 422),
)
async def feed(
    svc: Svc,
    caller: Caller,
    after: Annotated[
        str | None,
        Query(description="`next_cursor` of the previous page; none: from the oldest kept"),
    ] = None,
    only: Annotated[
        list[str] | None,
        Query(alias="type", description="Only these types (repeat, or comma-separated)"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    position = _after(after)
    types = _types(only)
    async with svc.db.write() as conn:
        await event_feed.stamp(conn)
    async with svc.db.read() as conn:
        rows = await event_feed.read(
            conn, after=position, types=types, domain_id=caller.domain_id, limit=limit + 1
        )
        more = len(rows) > limit or await event_feed.unnumbered(conn)
    shown = rows[:limit]
    return {
        "object": "list",
        "data": [view(row) for row in shown],
        "has_more": more,
        # Never null: a reader at the end keeps it and asks again later.
        "next_cursor": str(shown[-1].position) if shown else str(position),
    }
