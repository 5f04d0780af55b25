"""/v1/destinations: queue and circuit-breaker state per destination domain."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict

from postline.api import answers
from postline.api.auth import Admin, Svc
from postline.api.cursors import SinglePageCursor, single_page
from postline.api.problems import Problem
from postline.api.responses import problem_responses
from postline.api.views import page, rfc3339
from postline.delivery.breaker import Breakers, BreakerView
from postline.delivery.tlsrpt import SUCCESS
from postline.domains import DomainError, normalize_domain
from postline.store import breakers as breaker_store
from postline.store import emails as email_store
from postline.store import mta_sts as sts_store
from postline.store import tls_reports as report_store
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


async def live_breakers(svc: Svc) -> Breakers:
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
    breakers = await live_breakers(svc)
    names = set(counts.queued) | set(counts.deferred) | {v.domain for v in breakers.views()}
    data = [view(d, breakers.view(d), counts) for d in sorted(names)]
    return page(data, None)


@router.get(
    "/{domain}",
    summary="One destination: its queue, its breaker and its TLS figures",
    response_model=answers.DestinationDetail,
    responses=problem_responses(422),
)
async def get_destination(svc: Svc, _: Admin, domain: str) -> dict[str, Any]:
    """The TLS figures are the connections made under the destination's MTA-STS or
    DANE policy, per day, as its daily TLS reports (RFC 8460) count them."""
    name = _domain(domain)
    breakers = await live_breakers(svc)
    body = view(name, breakers.view(name), await _counts(svc))
    since = (utcnow() - timedelta(days=6)).strftime("%Y-%m-%d")
    async with svc.db.read() as conn:
        stored = await sts_store.get_policy(conn, name)
        counts = await report_store.counts_for(conn, name, since)
    body["tls"] = {"mta_sts": _policy_view(stored), "days": tls_days(counts)}
    return body


def _policy_view(stored: sts_store.StoredPolicy | None) -> dict[str, Any] | None:
    if stored is None:
        return None
    return {
        "policy_id": stored.policy_id,
        "mode": stored.mode,
        "mx": list(stored.patterns),
        "max_age": stored.max_age,
        "fetched_at": rfc3339(stored.fetched_at),
        "expires_at": rfc3339(stored.expires_at),
        "last_error": stored.last_error,
    }


def tls_days(counts: list[report_store.TlsCount]) -> list[dict[str, Any]]:
    """Counts summed per day and policy type, the failures by result type."""
    days: dict[tuple[str, str], dict[str, Any]] = {}
    for count in counts:
        day = days.setdefault(
            (count.day, count.policy_type),
            {
                "day": count.day,
                "policy_type": count.policy_type,
                "successful": 0,
                "failed": 0,
                "failures": {},
                "reported": True,
            },
        )
        day["reported"] = day["reported"] and count.reported_at is not None
        if count.result == SUCCESS:
            day["successful"] += count.count
        else:
            day["failed"] += count.count
            day["failures"][count.result] = day["failures"].get(count.result, 0) + count.count
    return [days[key] for key in sorted(days)]


def _domain(domain: str) -> str:
    try:
        return normalize_domain(domain)
    except DomainError as exc:
        raise Problem(422, str(exc), [{"field": "domain", "message": str(exc)}]) from None


@router.post(
    "/{domain}/breaker",
    summary="Open or close a destination's breaker by hand",
    response_model=answers.Destination,
)
async def set_breaker(svc: Svc, _: Admin, domain: str, body: BreakerIn) -> dict[str, Any]:
    name = _domain(domain)
    # Recorded for every worker (they apply it within seconds), and applied here at once.
    async with svc.db.write() as conn:
        await breaker_store.record_command(conn, name, body.state_action, utcnow())
    if body.state == "open":
        svc.engine.breakers.force_open(name)
    else:
        svc.engine.breakers.force_close(name)
    breakers = await live_breakers(svc)
    return view(name, breakers.view(name), await _counts(svc))
