"""The embedded queue's view of whose turn it is (queue/embedded.py ``_Turns``), on its own.

A lease takes the destinations it picks out of the view until it settles; mutation
testing showed that nothing checked what a failed lease gives back (``restore``), nor
which destination an enqueued or released job, or a released park, gives the view
(``EmbeddedQueue.enqueue``, ``release``, ``release_parked``): only the order of later
leases shows either, never whether a job can be leased. The tests of the queue run it
on a SQLite file of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from postline.config import normalize_database_url
from postline.ids import new_id
from postline.queue import Job
from postline.queue.embedded import EmbeddedQueue, _Turns
from postline.store.schema import queue_jobs
from postline.store.types import utcnow
from tests.harness.polling import poll
from tests.harness.stores import embedded_queue

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _view(*destinations: str) -> _Turns:
    turns = _Turns()
    turns.read(
        [(d, NOW - timedelta(minutes=len(destinations) - i)) for i, d in enumerate(destinations)],
        last=True,
    )
    return turns


def test_a_pick_takes_the_destinations_out_of_the_view_until_settled() -> None:
    turns = _view("a.test", "b.test")
    assert turns.pick(NOW, 1) == ["a.test"]
    assert turns.pick(NOW, 2) == ["b.test"]


def test_a_failed_lease_gives_its_destinations_their_turns_back() -> None:
    turns = _view("a.test", "b.test", "c.test")
    picked = turns.pick(NOW, 2)
    assert picked == ["a.test", "b.test"]
    turns.restore(picked)
    assert turns.pick(NOW, 3) == ["a.test", "b.test", "c.test"]


def _job(destination: str) -> Job:
    return Job(
        id=new_id("job_"),
        email_id=new_id("em_"),
        destination=destination,
        recipient_ids=[new_id("rcp_")],
        body_ref="body",
        due_at=utcnow(),
    )


@contextlib.asynccontextmanager
async def _queue(tmp_path: Path) -> AsyncIterator[EmbeddedQueue]:
    async with embedded_queue(normalize_database_url(f"sqlite:///{tmp_path}/postline.db")) as q:
        yield q


async def test_an_enqueued_job_gives_its_destination_to_the_view(tmp_path: Path) -> None:
    async with _queue(tmp_path) as queue:
        assert await queue.lease("worker-1", 1, 60) == []  # the view is read: it is active
        await queue.enqueue([_job("a.test")])
        assert queue._turns.pick(utcnow(), 2) == ["a.test"]


async def test_a_released_job_gives_its_destination_back_to_the_view(tmp_path: Path) -> None:
    async with _queue(tmp_path) as queue:
        await queue.enqueue([_job("a.test")])
        # Two asked of a.test, one given: nothing more of it is due, it leaves the view.
        [leased] = await queue.lease("worker-1", 2, 60)
        assert queue._turns.pick(utcnow(), 2) == []
        assert await queue.release(leased)
        assert queue._turns.pick(utcnow(), 2) == ["a.test"]


async def test_released_parked_jobs_give_their_destination_back_to_the_view(
    tmp_path: Path,
) -> None:
    """A parked job waits in the view until its park ends; ``release_parked`` makes it due
    now, and its destination's turn with it. (Mutation testing: the view learning of
    another destination, or of none, passed every contract test: only the order of later
    leases shows it.)"""
    async with _queue(tmp_path) as queue:
        await queue.enqueue([_job("a.test")])
        [leased] = await queue.lease("worker-1", 2, 60)
        assert await queue.park(leased, utcnow() + timedelta(hours=1))
        assert queue._turns.pick(utcnow(), 2) == []  # its turn is in an hour
        assert await queue.release_parked("a.test") == 1
        assert queue._turns.pick(utcnow(), 2) == ["a.test"]
        async with queue.db.read() as conn:
            parked_until = await conn.scalar(select(queue_jobs.c.parked_until))
        assert parked_until is None  # released: no longer parked


async def test_a_lease_that_fails_in_its_write_gives_the_picked_turns_back(
    tmp_path: Path,
) -> None:
    """Any error inside the lease's write (here a lease time no date can hold) reaches
    the caller as it is, and the destinations picked keep their turns."""
    async with _queue(tmp_path) as queue:
        await queue.enqueue([_job("a.test"), _job("b.test")])
        with pytest.raises(OverflowError):
            await queue.lease("worker-1", 2, 1e300)
        assert queue._turns.pick(utcnow(), 2) == ["a.test", "b.test"]


async def test_a_lease_cancelled_while_it_waits_for_the_writer_ends_cancelled(
    tmp_path: Path,
) -> None:
    """On SQLite a lease waits its turn for the one writer; cancelled there (the engine
    stopping), before it picked anything, it ends cancelled and the view keeps its turns."""
    async with _queue(tmp_path) as queue:
        await queue.enqueue([_job("a.test")])
        async with queue.db.write():  # another write holds the writer
            lease = asyncio.create_task(queue.lease("worker-1", 1, 60))

            async def waiting_for_the_writer() -> bool:
                # The view is read outside the write: once it is, the lease waits.
                return queue._turns.active and not lease.done()

            await poll(waiting_for_the_writer, timeout=10, what="the lease to read the view")
            lease.cancel()
            with pytest.raises(asyncio.CancelledError):
                await lease
        assert queue._turns.pick(utcnow(), 1) == ["a.test"]
