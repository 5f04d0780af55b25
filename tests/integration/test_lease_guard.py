"""The lease guard (delivery/lease.py) on a real queue: the answer asked before the final dot.

Found by mutation testing (docs/TESTING.md): the engine tests reach ``still_mine`` only
while the lease is theirs, so nothing failed when it said "mine" after losing the lease,
when the queue could not answer, or when it forgot a loss it had seen.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import select

from postline.delivery.lease import LeaseGuard, LeaseLost
from postline.ids import new_id
from postline.queue import Job
from postline.queue.embedded import EmbeddedQueue
from postline.queue.redis import RedisQueue
from postline.store.schema import queue_jobs
from postline.store.types import utcnow
from tests.harness.polling import poll
from tests.harness.stores import embedded_queue


@pytest_asyncio.fixture
async def queue(tmp_path: Path) -> AsyncIterator[EmbeddedQueue]:
    async with embedded_queue(f"sqlite+aiosqlite:///{tmp_path}/queue.db") as embedded:
        yield embedded


def a_job() -> Job:
    email_id = new_id("em_")
    return Job(
        id=new_id("job_"),
        email_id=email_id,
        destination="dest.test",
        recipient_ids=[new_id("rcp_")],
        body_ref=email_id,
        due_at=utcnow() - timedelta(seconds=1),
    )


async def taken_over(queue: EmbeddedQueue) -> tuple[Job, Job]:
    """A job w1 leased for an instant, and the same job once w2 has taken it over."""
    await queue.enqueue([a_job()])
    (stale,) = await queue.lease("w1", 1, 0.01)
    leased = await poll(lambda: queue.lease("w2", 1, 60), timeout=10, what="w1's lease to lapse")
    assert leased[0].id == stale.id
    return stale, leased[0]


async def test_still_mine_renews_a_lease_that_is_mine(queue: EmbeddedQueue) -> None:
    """Asked, the guard renews: its job outlives the short lease it was taken with, while a
    twin taken with the same lease and not asked about runs out (as in the queue contract's
    ``test_extend_keeps_the_lease``)."""
    kept, twin = a_job(), a_job()
    await queue.enqueue([kept, twin])
    leased = {j.id: j for j in await queue.lease("w1", 10, 0.2)}
    guard = LeaseGuard(queue, leased[kept.id], lease_seconds=60)
    assert await guard.still_mine() is True
    guard.check()  # not lost: no exception
    again = await poll(
        lambda: queue.lease("w2", 10, 60), timeout=10, what="the twin's lease to run out"
    )
    assert [j.id for j in again] == [twin.id]
    assert await queue.lease("w3", 10, 60) == []  # the renewed one is still w1's


async def test_still_mine_says_no_once_another_worker_took_the_job(queue: EmbeddedQueue) -> None:
    stale, taken = await taken_over(queue)
    guard = LeaseGuard(queue, stale, lease_seconds=60)
    assert await guard.still_mine() is False
    assert guard.lost is True  # remembered: it never comes back
    with pytest.raises(LeaseLost, match=stale.id):
        guard.check()
    # w2's lease is untouched by w1's question, and w2's own guard still says yes.
    assert await LeaseGuard(queue, taken, lease_seconds=60).still_mine() is True


async def test_a_lost_lease_stays_lost_without_asking_the_queue(queue: EmbeddedQueue) -> None:
    stale, taken = await taken_over(queue)
    guard = LeaseGuard(queue, stale, lease_seconds=60)
    assert await guard.still_mine() is False
    await queue.release(taken)  # w2 gives the job back; w1 could lease it again...
    assert await guard.still_mine() is False  # ...but this guard's lease is gone for good


async def test_still_mine_says_no_when_the_queue_cannot_answer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A queue that does not answer: aborting costs a retry, sending could cost a duplicate.
    Port 9 on loopback: nothing listens, the connection is refused at once."""
    queue = RedisQueue("redis://127.0.0.1:9/0", prefix=new_id("pl_"))
    try:
        job = replace(a_job(), lease_owner="w1")
        guard = LeaseGuard(queue, job, lease_seconds=60)
        with caplog.at_level(logging.WARNING, logger="postline.engine"):
            assert await guard.still_mine() is False
        (record,) = [r for r in caplog.records if r.name == "postline.engine"]
        assert record.getMessage().startswith(f"cannot confirm the lease of job_id={job.id}: ")
        assert record.getMessage() != f"cannot confirm the lease of job_id={job.id}: None"
    finally:
        await queue.close()


async def test_keep_stops_and_marks_the_lease_lost_when_it_was_taken(
    queue: EmbeddedQueue, caplog: pytest.LogCaptureFixture
) -> None:
    """Once the queue says the lease is another worker's, ``keep`` marks it lost, says so
    once with the job's id, and returns."""
    stale, _taken = await taken_over(queue)
    guard = LeaseGuard(queue, stale, lease_seconds=1.5)  # renews every 0.5 s
    with caplog.at_level(logging.WARNING, logger="postline.engine"):
        await asyncio.wait_for(guard.keep(), timeout=30)  # returns by itself once lost
    assert guard.lost is True
    said = [r.getMessage() for r in caplog.records if r.name == "postline.engine"]
    assert said == [f"lease lost job_id={stale.id}"]


async def lease_until(queue: EmbeddedQueue, job: Job) -> object:
    async with queue.db.read() as conn:
        row = (
            await conn.execute(select(queue_jobs.c.lease_until).where(queue_jobs.c.id == job.id))
        ).one()
    return row.lease_until


async def test_still_mine_only_looks_at_a_lease_with_most_of_it_left(
    queue: EmbeddedQueue,
) -> None:
    """A lease taken moments ago is confirmed by a read: its row is left as it was (a write
    per message held up every other writer), and it still ends when it said it would."""
    await queue.enqueue([a_job()])
    (leased,) = await queue.lease("w1", 1, 60)
    before = await lease_until(queue, leased)
    guard = LeaseGuard(queue, leased, lease_seconds=60)
    assert await guard.still_mine() is True
    assert await lease_until(queue, leased) == before


async def test_still_mine_renews_a_lease_with_less_than_most_of_it_left(
    queue: EmbeddedQueue,
) -> None:
    """Taken for 30 s and asked about with a 60 s lease: less than two thirds of it are
    left, so the guard renews it to a whole one."""
    await queue.enqueue([a_job()])
    (leased,) = await queue.lease("w1", 1, 30)
    before = await lease_until(queue, leased)
    assert await LeaseGuard(queue, leased, lease_seconds=60).still_mine() is True
    after = await lease_until(queue, leased)
    assert isinstance(before, datetime) and isinstance(after, datetime)
    assert after - before >= timedelta(seconds=25)


async def test_concurrent_confirmations_share_reads_and_each_get_their_answer(
    queue: EmbeddedQueue,
) -> None:
    """Ten deliveries ask at once, one of them about a job another worker took: each is
    answered for its own job."""
    stale, _taken = await taken_over(queue)
    await queue.enqueue([a_job() for _ in range(9)])
    mine = await queue.lease("w1", 9, 60)
    assert len(mine) == 9
    guards = [LeaseGuard(queue, job, lease_seconds=60) for job in [*mine, stale]]
    answers = await asyncio.gather(*(guard.still_mine() for guard in guards))
    assert answers == [True] * 9 + [False]


async def test_keep_renews_a_short_lease_before_it_runs_out(queue: EmbeddedQueue) -> None:
    """A lease of 1.2 s is renewed every 0.4 s (a third of it; the floor of 0.5 s is for
    leases of 1.5 s and more): another worker asking all along never gets the job, until
    the lease has been carried past three of its lengths."""
    await queue.enqueue([a_job()])
    (leased,) = await queue.lease("w1", 1, 1.2)
    first = await lease_until(queue, leased)
    assert isinstance(first, datetime)
    guard = LeaseGuard(queue, leased, lease_seconds=1.2)
    keeper = asyncio.create_task(guard.keep())
    try:

        async def carried_past_three_lengths() -> bool:
            assert await queue.lease("w2", 1, 60) == [], "the kept lease ran out"
            until = await lease_until(queue, leased)
            assert isinstance(until, datetime)
            return until - first > timedelta(seconds=2.4)

        await poll(carried_past_three_lengths, timeout=15, what="the lease to be renewed")
    finally:
        keeper.cancel()
    assert guard.lost is False


async def test_keep_logs_a_queue_that_cannot_extend_and_tries_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The queue is away (Redis on port 9 of loopback: refused at once): each failed renewal
    is a warning naming the job and the error, and the guard goes on trying (the lease
    still runs; an away queue is not a lost lease)."""
    queue = RedisQueue("redis://127.0.0.1:9/0", prefix=new_id("pl_"))
    job = replace(a_job(), lease_owner="w1")
    guard = LeaseGuard(queue, job, lease_seconds=1.5)  # a try every 0.5 s
    caplog.set_level(logging.WARNING, logger="postline.engine")
    keeper = asyncio.create_task(guard.keep())
    try:

        async def warned_twice() -> list[str]:
            said = [r.getMessage() for r in caplog.records if r.name == "postline.engine"]
            return said if len(said) >= 2 else []

        said = await poll(warned_twice, timeout=15, what="two failed renewals")
        assert not keeper.done()
    finally:
        keeper.cancel()
        await queue.close()
    prefix = f"extending the lease of job_id={job.id} failed: "
    for message in said:
        assert message.startswith(prefix), message
        assert message.removeprefix(prefix) not in {"", "None"}, message
    assert guard.lost is False
