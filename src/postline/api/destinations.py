"""/v1/destinations: queue and circuit-breaker state per destination domain."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict

from postline.api.auth import Admin, Caller, Svc
from postline.api.problems import Problem
from postline.api.views import rfc3339
from postline.delivery.breaker import BreakerView
from postline.domains import DomainError, normalize_domain
from postline.store import emails as email_store

router = APIRouter(prefix="/v1/destinations", tags=["operations"])


class BreakerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    state: Literal["open", "closed"]


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


@router.get("", summary="Every destination with queued mail or a breaker that is not closed")
async def list_destinations(svc: Svc, _: Caller) -> dict[str, Any]:
    counts = await _counts(svc)
    breakers = svc.engine.breakers
    names = set(counts.queued) | set(counts.deferred) | {v.domain for v in breakers.views()}
    data = [view(d, breakers.view(d), counts) for d in sorted(names)]
    return {"data": data, "next_cursor": None}


@router.post("/{domain}/breaker", summary="Open or close a destination's breaker by hand")
async def set_breaker(svc: Svc, _: Admin, domain: str, body: BreakerIn) -> dict[str, Any]:
    try:
        name = normalize_domain(domain)
    except DomainError as exc:
        raise Problem(422, str(exc), [{"field": "domain", "message": str(exc)}]) from None
    breakers = svc.engine.breakers
    if body.state == "open":
        breakers.force_open(name)
    else:
        breakers.force_close(name)
    return view(name, breakers.view(name), await _counts(svc))
