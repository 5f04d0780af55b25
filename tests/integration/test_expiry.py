"""Expiry: ``max_age`` counts from when a recipient became due, and only real attempts
move it to ``failed``; a job that keeps raising backs off and is held to the same rule.

Days are skipped with the recorder's injectable clock, never waited for.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Any

from sqlalchemy import update

from postline.delivery.engine import INTERNAL_ERROR, Engine
from postline.delivery.lease import LeaseGuard
from postline.delivery.record import RecipientResult
from postline.model import AttemptScope, RecipientStatus
from postline.outcomes import Outcome
from postline.queue import Job
from postline.store import emails as email_store
from postline.store.schema import queue_jobs
from postline.store.types import utcnow
from tests.faults.scenario import Topology, topology
from tests.harness import FakeMX
from tests.harness.clock import MovableClock
from tests.harness.polling import poll
from tests.harness.postline import Factory, PostlineUnderTest

__all__ = ["topology"]  # the fixture, imported for its parameters

SIX_DAYS = timedelta(days=6)


def _rfc3339(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


async def _events(pl: PostlineUnderTest, email_id: str) -> list[dict[str, Any]]:
    """The outbox payloads of an email, as the webhooks would carry them."""
    async with pl.services.db.read() as conn:
        return [e.payload for e in await email_store.get_events(conn, email_id)]


async def _make_due_now(pl: PostlineUnderTest, email_id: str) -> None:
    """The queue has no clock to move: bring the job's due time to now instead."""
    async with pl.services.db.write() as conn:
        await conn.execute(
            update(queue_jobs).where(queue_jobs.c.email_id == email_id).values(due_at=utcnow())
        )


async def test_a_scheduled_email_greylisted_at_its_first_attempt_is_deferred_then_delivered(
    postline_factory: Factory, fake_mx: FakeMX
) -> None:
    """Scheduled six days ahead (past the 5-day max_age from acceptance), greylisted once."""
    clock = MovableClock()
    pl = await postline_factory(clock=clock)
    fake_mx.on_rcpt("grey@dest.test", "451 4.7.1 greylisted, try again later", "250 2.1.5 OK")
    accepted = await pl.send(to="grey@dest.test", scheduled_at=_rfc3339(utcnow() + SIX_DAYS))
    assert accepted["recipients"][0]["status"] == "scheduled"
    # Six days pass for the recorder; the queue is told the job is due.
    clock.offset = SIX_DAYS
    await _make_due_now(pl, accepted["id"])
    detail = await pl.wait_until_final(accepted["id"])
    (recipient,) = detail["recipients"]
    assert recipient["status"] == "delivered"
    assert [step["status"] for step in recipient["timeline"]] == ["deferred", "delivered"]
    types = [event["type"] for event in await _events(pl, accepted["id"])]
    assert types == ["email.queued", "email.deferred", "email.delivered"]


async def test_an_unscheduled_email_past_max_age_fails_with_its_event(
    postline_factory: Factory, fake_mx: FakeMX
) -> None:
    clock = MovableClock()
    pl = await postline_factory(clock=clock)
    fake_mx.on_rcpt("stuck@dest.test", "451 4.2.1 mailbox busy")
    accepted = await pl.send(to="stuck@dest.test")
    await pl.wait_for(
        accepted["id"], lambda d: d["recipients"][0]["status"] == "deferred", what="a deferral"
    )
    clock.offset = SIX_DAYS
    detail = await pl.wait_for_status(accepted["id"], ["failed"])
    assert detail["recipients"][0]["timeline"][-1]["status"] == "failed"
    failed = [e for e in await _events(pl, accepted["id"]) if e["type"] == "email.failed"]
    assert len(failed) == 1
    assert failed[0]["data"]["reason"].startswith("expired after")


async def _leased(pl: PostlineUnderTest, email_id: str) -> Job:
    async def lease() -> Job | None:
        jobs = await pl.services.queue.lease("test", 10, 60)
        return next((job for job in jobs if job.email_id == email_id), None)

    job: Job = await poll(lease, timeout=10, what="the email's job")
    return job


async def test_only_a_real_attempt_moves_an_expired_recipient_to_failed(
    postline_factory: Factory,
) -> None:
    """A deferral decided without connecting (a parked breaker) never expires a recipient."""
    clock = MovableClock()
    pl = await postline_factory(engine=False, clock=clock)
    accepted = await pl.send(to="late@dest.test")
    async with pl.services.db.read() as conn:
        (recipient,) = await email_store.get_recipients(conn, accepted["id"])
    recorder = pl.services.engine.recorder
    clock.offset = SIX_DAYS

    async def record(job: Job, scope: AttemptScope) -> None:
        deferred = Outcome(status=RecipientStatus.DEFERRED, smtp_code=451, response="451 later")
        await recorder.record(
            job,
            [RecipientResult(recipient.id, deferred, scope)],
            mx_host=None,
            duration_ms=0,
            retry_at=utcnow(),
        )

    await record(await _leased(pl, accepted["id"]), AttemptScope.BREAKER)
    assert (await pl.email(accepted["id"]))["recipients"][0]["status"] == "deferred"
    await record(await _leased(pl, accepted["id"]), AttemptScope.TRANSACTION)
    detail = await pl.email(accepted["id"])
    assert detail["recipients"][0]["status"] == "failed"
    assert [step["status"] for step in detail["recipients"][0]["timeline"]] == [
        "deferred",
        "failed",
    ]


@dataclass(frozen=True)
class _Try:
    attempt: int
    due_at: datetime
    at: datetime


class _BrokenEngine(Engine):
    """An engine whose every delivery raises, as a bug would: it notes each try."""

    tries: list[_Try]

    async def _deliver(self, job: Job, guard: LeaseGuard) -> None:
        self.tries.append(_Try(job.attempt, job.due_at, utcnow()))
        raise RuntimeError("broken on purpose")


async def test_a_job_that_keeps_raising_backs_off_then_fails_with_internal_error(
    postline_factory: Factory, topology: Topology
) -> None:
    # First unexpected retry after 0.2 s (the schedule's first step), doubling, capped at 5 s.
    clock = MovableClock()
    pl = await postline_factory(
        engine=False, clock=clock, retry_schedule="0.2,5", **topology.settings
    )
    services = pl.services
    engine = _BrokenEngine(
        db=services.db,
        queue=services.queue,
        spool=services.spool,
        router=services.router,
        delivery=services.engine.delivery,
        recorder=services.engine.recorder,
        metrics=services.metrics,
        settings=services.settings,
    )
    engine.tries = []
    accepted = await pl.send(to="someone@dest.test")
    pl.engine_task = asyncio.create_task(engine.run(pl.stop))

    async def tried_four_times() -> bool:
        return len(engine.tries) >= 4

    await poll(tried_four_times, timeout=20, what="four tries of the broken delivery")
    tries = engine.tries[:4]
    assert [t.attempt for t in tries] == [0, 1, 2, 3]
    # The wait after each failure, from that try to the due time of the next, doubles:
    # 0.2 s, 0.4 s, 0.8 s less 10% jitter at least (a flat 0.2 s would fail the last two).
    waits = [(after.due_at - before.at).total_seconds() for before, after in pairwise(tries)]
    for failure, wait in enumerate(waits):
        assert wait >= 0.9 * 0.2 * 2**failure, waits
    assert (await pl.email(accepted["id"]))["recipients"][0]["status"] == "queued"

    clock.offset = SIX_DAYS
    detail = await pl.wait_for_status(accepted["id"], ["failed"], timeout=30)
    await pl.stop_engine()
    (recipient,) = detail["recipients"]
    assert recipient["status"] == "failed"
    assert recipient["timeline"][-1]["status"] == "failed"
    failed = [e for e in await _events(pl, accepted["id"]) if e["type"] == "email.failed"]
    assert [e["data"]["reason"] for e in failed] == [INTERNAL_ERROR]
    assert await services.queue.depth() == {}  # the job is gone: no try after giving up
