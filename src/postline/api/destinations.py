"""/v1/destinations: queue and circuit-breaker state per destination domain."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict

from postline.api import answers
from postline.api.auth import Admin, Svc
from postline.api.cursors import SinglePageCursor, single_page
from postline.api.problems import Problem
from postline.api.views import page, rfc3339
from postline.delivery.breaker import Breakers, BreakerView
from postline.domains import DomainError, normalize_domain
from postline.store import breakers as breaker_store
from postline.store import emails as email_store
from postline.store.types import utcnow

router = APIRouter(
    prefix="/v1/destinations",
    tags=["operations"],
)


class BreakerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    state: Literal["open", "closed"]

    @property
    def state_action(self) -> breaker_store.Action:
        return "open" if self.state == "open" else "close"


@dataclass(frozen=True)
class _Counts:
    queued: dict[str, int]
    deferred: dict[str, int]
    in_flight: dict[str, int]


async def _counts(svc: Svc) -> _Counts:
    async with svc.db.read() as conn:
        deferred = await email_store.deferred_by_destination(conn)
    return _Counts(await svc.queue.depth(), deferred, await svc.queue.in_flight())


def view(domain: str, breaker: BreakerView, counts: _Counts) -> dict[str, Any]:
    return {
        "domain": domain,
        "queued": counts.queued.get(domain, 0),
        "deferred": counts.deferred.get(domain, 0),
        "in_flight": counts.in_flight.get(domain, 0),
        "breaker": str(breaker.state),
        "breaker_until": rfc3339(breaker.until),
        "consecutive_failures": breaker.consecutive_failures,
        "last_error": breaker.last_error,
    }


async def _breakers(svc: Svc) -> Breakers:
    """This process's live breakers, or, in an API-only process, the database's view of them."""
    if svc.engine.running:
        return svc.engine.breakers
    breakers, _ = await svc.engine.load_breakers()
    return breakers


@router.get(
    "",
    summary="Every destination with queued mail or a breaker that is not closed",
    response_model=answers.DestinationList,
)
async def list_destinations(svc: Svc, _: Admin, cursor: SinglePageCursor = None) -> dict[str, Any]:
    """Unscoped keys only: the queue is shared, so its destinations (where every domain
    sends, how much, the last errors) are other domains' data for a scoped key."""
    single_page(cursor)
    counts = await _counts(svc)
    breakers = await _breakers(svc)
    names = set(counts.queued) | set(counts.deferred) | {v.domain for v in breakers.views()}
    data = [view(d, breakers.view(d), counts) for d in sorted(names)]
    return page(data, None)


@router.post(
    "/{domain}/breaker",
    summary="Open or close a destination's breaker by hand",
    response_model=answers.Destination,
)
async def set_breaker(svc: Svc, _: Admin, domain: str, body: BreakerIn) -> dict[str, Any]:
    try:
        name = normalize_domain(domain)
    except DomainError as exc:
        raise Problem(422, str(exc), [{"field": "domain", "message": str(exc)}]) from None
    # Recorded for every worker (they apply it within seconds), and applied here at once.
    async with svc.db.write() as conn:
        await breaker_store.record_command(conn, name, body.state_action, utcnow())
    if body.state == "open":
        svc.engine.breakers.force_open(name)
    else:
        svc.engine.breakers.force_close(name)
    breakers = await _breakers(svc)
    return view(name, breakers.view(name), await _counts(svc))
