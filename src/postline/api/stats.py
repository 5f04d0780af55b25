"""/v1/stats: what happened to the mail, per hour or day, from counters kept as events
are written down (store.event_feed), never by scanning the send log."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from postline.api import answers
from postline.api.auth import Statistician, Svc, domain_in_scope
from postline.api.problems import Problem
from postline.api.responses import problem_responses
from postline.api.schemas import Timestamp
from postline.api.views import rfc3339
from postline.store import event_feed
from postline.store.types import utcnow

router = APIRouter(prefix="/v1/stats", tags=["stats"])

#: The counters of an answer, in its order; each is a number of recipient events.
COUNTS = (
    "accepted",
    "delivered",
    "deferred",
    "bounced",
    "bounced_hard",
    "bounced_soft",
    "bounced_block",
    "bounced_undetermined",
    "complained",
    "failed",
    "suppressed",
    "cancelled",
    "opened",
    "clicked",
    "unsubscribed",
    "received",
)

#: The longest span one request may cover, in buckets of each size.
MAX_BUCKETS = {"hour": 24 * 31, "day": 366}


def _figures(counted: dict[str, int]) -> dict[str, Any]:
    figures: dict[str, Any] = {name: counted.get(name, 0) for name in COUNTS}
    delivered, bounced = figures["delivered"], figures["bounced"]
    ended = delivered + bounced + figures["failed"]
    figures["delivery_rate"] = round(delivered / ended, 4) if ended else None
    figures["bounce_rate"] = (
        round(bounced / (delivered + bounced), 4) if delivered + bounced else None
    )
    figures["complaint_rate"] = round(figures["complained"] / delivered, 4) if delivered else None
    return figures


def _start_of(moment: datetime, bucket: str) -> datetime:
    hour = moment.replace(minute=0, second=0, microsecond=0)
    return hour.replace(hour=0) if bucket == "day" else hour


def _window(start: datetime | None, end: datetime | None, bucket: str) -> tuple[datetime, datetime]:
    try:
        return _whole_buckets(start, end, bucket)
    except OverflowError:  # a day before year 1 or after 9999 (schemathesis: a 500)
        message = "from and to must lie between the years 1 and 9999 with room for a bucket"
        raise Problem(422, f"to: {message}", [{"field": "to", "message": message}]) from None


def _whole_buckets(
    start: datetime | None, end: datetime | None, bucket: str
) -> tuple[datetime, datetime]:
    step = timedelta(days=1) if bucket == "day" else timedelta(hours=1)
    end = end or utcnow()
    start = start or end - (timedelta(days=7) if bucket == "day" else timedelta(hours=24))
    for name, value in (("from", start), ("to", end)):
        if value.tzinfo is None:
            message = "must include a time zone offset (RFC 3339), e.g. ...Z"
            raise Problem(422, f"{name}: {message}", [{"field": name, "message": message}])
    first, last = _start_of(start, bucket), _start_of(end, bucket) + step
    if first >= last or (last - first) / step > MAX_BUCKETS[bucket]:
        message = f"from must be before to, at most {MAX_BUCKETS[bucket]} {bucket}s apart"
        raise Problem(422, f"from: {message}", [{"field": "from", "message": message}])
    return first, last


@router.get(
    "",
    summary="Counts and rates of a domain's (or every domain's) mail, per hour or day",
    response_model=answers.Stats,
    responses=problem_responses(403, 422),
)
async def stats(
    svc: Svc,
    caller: Statistician,
    domain: str | None = None,
    start: Annotated[Timestamp | None, Query(alias="from")] = None,
    end: Annotated[Timestamp | None, Query(alias="to")] = None,
    bucket: Literal["hour", "day"] = "hour",
) -> dict[str, Any]:
    first, last = _window(start, end, bucket)
    await event_feed.stamp_all(svc.db.write)
    async with svc.db.read() as conn:
        domain_id = caller.domain_id
        if domain is not None:
            domain_id = await domain_in_scope(conn, caller, domain)
        rows = await event_feed.counts_between(conn, domain_id, first, last)
    per_bucket: dict[datetime, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    totals: dict[str, int] = defaultdict(int)
    for hour, name, count in rows:
        per_bucket[_start_of(hour, bucket)][name] += count
        totals[name] += count
    return {
        "object": "stats",
        "domain": domain.strip().lower() if domain else caller.domain_name,
        "from": rfc3339(first),
        "to": rfc3339(last),
        "bucket": bucket,
        "totals": _figures(totals),
        "data": [
            {"start": rfc3339(moment), **_figures(per_bucket[moment])}
            for moment in sorted(per_bucket)
        ],
    }
