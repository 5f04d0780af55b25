"""The queue contract, run against every adapter and store backend."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
import pytest_asyncio

from postline.config import normalize_database_url
from postline.ids import new_id
from postline.queue import Job, Queue
from postline.queue.embedded import EmbeddedQueue
from postline.store.db import Database
from postline.store.migrate import upgrade_async
from postline.store.types import utcnow


@pytest_asyncio.fixture
async def queue(database_url: str) -> AsyncIterator[Queue]:
    url = normalize_database_url(database_url)
    await upgrade_async(url)
    db = Database(url)
    try:
        yield EmbeddedQueue(db)
    finally:
        await db.close()


def job(destination: str = "dest.test", due_in: float = 0, body: str | None = None) -> Job:
    email_id = new_id("em_")
    return Job(
        id=new_id("job_"),
        email_id=email_id,
        destination=destination,
        recipient_ids=[new_id("rcp_"), new_id("rcp_")],
        body_ref=body or email_id,
        due_at=utcnow() + timedelta(seconds=due_in),
    )


async def test_lease_gives_due_jobs_once(queue: Queue) -> None:
    due, later = job(), job(due_in=3600)
    await queue.enqueue([due, later])
    first = await queue.lease("w1", 10, 60)
    assert [j.id for j in first] == [due.id]
    assert first[0].recipient_ids == due.recipient_ids
    assert first[0].lease_owner == "w1"
    assert await queue.lease("w2", 10, 60) == []


async def test_concurrent_leases_never_share_a_job(queue: Queue) -> None:
    jobs = [job() for _ in range(40)]
    await queue.enqueue(jobs)
    results = await asyncio.gather(*(queue.lease(f"w{i}", 7, 60) for i in range(8)))
    leased = [j.id for batch in results for j in batch]
    assert len(leased) == len(set(leased)) == 40


async def test_expired_lease_is_leased_again(queue: Queue) -> None:
    await queue.enqueue([job()])
    (first,) = await queue.lease("dead-worker", 10, 0.01)
    deadline = asyncio.get_running_loop().time() + 5
    again: list[Job] = []
    while not again:
        again = await queue.lease("w2", 10, 60)
        assert asyncio.get_running_loop().time() < deadline, "lease never expired"
        await asyncio.sleep(0.02)
    assert again[0].id == first.id and again[0].lease_owner == "w2"
    # The dead worker's late ack must not remove the job now owned by w2.
    await queue.ack(first)
    assert (await queue.depth()) == {"dest.test": 1}


async def test_extend_keeps_the_lease(queue: Queue) -> None:
    await queue.enqueue([job()])
    (leased,) = await queue.lease("w1", 10, 0.2)
    assert await queue.extend(leased, 60)
    assert leased.lease_until is not None and leased.lease_until > utcnow() + timedelta(seconds=30)
    assert await queue.lease("w2", 10, 60) == []


async def test_ack_removes_and_retry_reschedules(queue: Queue) -> None:
    a, b = job(), job()
    await queue.enqueue([a, b])
    leased = {j.id: j for j in await queue.lease("w1", 10, 60)}
    await queue.ack(leased[a.id])
    await queue.retry(leased[b.id], utcnow() + timedelta(seconds=3600), b.recipient_ids[:1])
    assert await queue.depth() == {"dest.test": 1}
    assert await queue.lease("w1", 10, 60) == []
    await queue.retry(leased[b.id], utcnow(), b.recipient_ids[:1])  # stale owner: no effect


async def test_retry_keeps_only_pending_recipients_and_counts_attempts(queue: Queue) -> None:
    original = job()
    await queue.enqueue([original])
    (leased,) = await queue.lease("w1", 10, 60)
    await queue.retry(leased, utcnow(), original.recipient_ids[1:])
    (again,) = await queue.lease("w1", 10, 60)
    assert again.recipient_ids == original.recipient_ids[1:]
    assert again.attempt == 1


async def test_release_gives_the_job_back_now(queue: Queue) -> None:
    await queue.enqueue([job()])
    (leased,) = await queue.lease("w1", 10, 60)
    await queue.release(leased)
    (again,) = await queue.lease("w2", 10, 60)
    assert again.attempt == 0


async def test_recover_expired_counts_freed_leases(queue: Queue) -> None:
    await queue.enqueue([job(), job()])
    await queue.lease("gone", 10, 0.01)
    deadline = asyncio.get_running_loop().time() + 5
    recovered = 0
    while recovered == 0:
        recovered = await queue.recover_expired()
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)
    assert recovered == 2
    assert await queue.in_flight() == {}


async def test_body_refs_depth_and_in_flight(queue: Queue) -> None:
    shared_body = "em_shared"
    jobs = [job("a.test", body=shared_body), job("b.test", body=shared_body), job("b.test")]
    await queue.enqueue(jobs)
    assert await queue.body_refs() == {shared_body, jobs[2].body_ref}
    assert await queue.depth() == {"a.test": 1, "b.test": 2}
    await queue.lease("w1", 1, 60)
    assert sum((await queue.in_flight()).values()) == 1


@pytest.mark.parametrize("count", [0, 1])
async def test_enqueue_nothing_or_one(queue: Queue, count: int) -> None:
    await queue.enqueue([job() for _ in range(count)])
    assert sum((await queue.depth()).values()) == count
