"""On SQLite with the embedded queue the recorder leases the engine's next jobs in the
transaction that records its last ones (``Recorder.refill``): one turn at SQLite's one
writer per batch of deliveries instead of two. Each job is still delivered once, a
lease that fails there costs nothing but the turn, and a stopping engine takes no more.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from postline.queue import Job
from postline.store.schema import queue_jobs
from tests.harness import FakeMX
from tests.harness.postline import Factory, PostlineUnderTest

EMAILS = 12
#: Few slots, so most jobs are taken as earlier ones finish.
CONCURRENCY = 3


async def _send_all(pl: PostlineUnderTest) -> list[str]:
    return [(await pl.send(to=f"r{i}@dest.test"))["id"] for i in range(EMAILS)]


async def _all_delivered(pl: PostlineUnderTest, ids: list[str]) -> None:
    for email_id in ids:
        await pl.wait_for_status(email_id, ["delivered"], timeout=30)


async def test_the_next_jobs_are_leased_with_the_outcomes_and_each_delivered_once(
    postline_factory: Factory, fake_mx: FakeMX
) -> None:
    pl = await postline_factory(engine=False, concurrency=CONCURRENCY)
    engine = pl.services.engine
    refilled: list[Job] = []
    lease_in = engine.lease_in

    async def counted(conn: AsyncConnection, limit: int) -> list[Job]:
        assert limit <= CONCURRENCY  # the slots the finishing deliveries leave, no more
        jobs = await lease_in(conn, limit)
        refilled.extend(jobs)
        return jobs

    engine.lease_in = counted  # type: ignore[method-assign]
    ids = await _send_all(pl)
    pl.start_engine()
    await _all_delivered(pl, ids)
    assert refilled, "no job was leased in a recorder's transaction"
    assert len({job.id for job in refilled}) == len(refilled)
    recipients = sorted(rcpt for message in fake_mx.received for rcpt in message.rcpt_tos)
    assert recipients == sorted(f"r{i}@dest.test" for i in range(EMAILS))


async def test_a_lease_that_fails_with_the_outcomes_leaves_them_recorded(
    postline_factory: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    """The outcomes commit all the same; the engine's own loop takes the jobs instead."""
    pl = await postline_factory(engine=False, concurrency=CONCURRENCY)
    engine = pl.services.engine
    tried: list[int] = []

    async def failing(conn: AsyncConnection, limit: int) -> list[Job]:
        tried.append(limit)
        raise RuntimeError("no lease today")

    engine.lease_in = failing  # type: ignore[method-assign]
    ids = await _send_all(pl)
    with caplog.at_level(logging.WARNING, logger="postline.delivery"):
        pl.start_engine()
        await _all_delivered(pl, ids)
    assert tried
    assert "leasing with the outcomes failed: RuntimeError" in caplog.text


async def _leased(pl: PostlineUnderTest) -> int:
    async with pl.services.db.read() as conn:
        statement = (
            select(func.count())
            .select_from(queue_jobs)
            .where(queue_jobs.c.lease_owner.is_not(None))
        )
        return int((await conn.execute(statement)).scalar_one())


async def test_a_stopped_engine_takes_no_more_and_gives_back_what_came_too_late(
    postline_factory: Factory, fake_mx: FakeMX
) -> None:
    """Jobs leased with outcomes as the engine stopped (the drain has its list already)
    are given back, not delivered by nobody until their lease runs out."""
    pl = await postline_factory(engine=False)
    engine = pl.services.engine
    pl.start_engine()
    await pl.stop_engine()
    assert engine.wanted(5) == 0
    await _send_all(pl)
    jobs = await pl.services.queue.lease(engine.owner, EMAILS, 30)
    assert len(jobs) == EMAILS and await _leased(pl) == EMAILS
    engine.start(jobs)
    deadline = asyncio.get_running_loop().time() + 10
    while await _leased(pl):
        assert asyncio.get_running_loop().time() < deadline, "the late jobs stayed leased"
        await asyncio.sleep(0.02)
    # Given back, not delivered: they wait in the queue for the next engine.
    assert fake_mx.received == []
    async with pl.services.db.read() as conn:
        queued = (await conn.execute(select(func.count()).select_from(queue_jobs))).scalar_one()
    assert queued == EMAILS
