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
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError

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


def _job(destination: str, due: datetime | None = None) -> Job:
    """A job for ``destination``, due ``due`` (now if not given)."""
    return Job(
        id=new_id("job_"),
        email_id=new_id("em_"),
        destination=destination,
        recipient_ids=[new_id("rcp_")],
        body_ref="body",
        due_at=due or utcnow(),
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


# The view on its own (mutation testing, seventh pass: most of ``_Turns`` changes only
# the order of later leases, which the contract tests see only in part). Turns below are
# whole minutes before NOW, so a destination stamped served at NOW (plus its step of a
# microsecond) goes after every one of them.


def test_a_served_destination_goes_after_the_others_and_stays_if_it_gave_all_asked() -> None:
    """A destination's turn is the later of its earliest due job and when it was last
    served; one that gave every job asked of it may have more, so it stays in the view,
    behind the others. A destination whose turn is still to come is not picked."""
    turns = _view("a.test", "b.test", "c.test")
    turns.note("later.test", NOW + timedelta(hours=1))
    assert turns.pick(NOW, 1) == ["a.test"]
    turns.settle(NOW, {"a.test": 1}, [_job("a.test", NOW - timedelta(minutes=3))])
    assert turns.turn("a.test") == NOW + timedelta(microseconds=1)
    assert turns.turn("b.test") == NOW - timedelta(minutes=2)
    assert turns.pick(NOW + timedelta(seconds=1), 5) == ["b.test", "c.test", "a.test"]


def test_a_destination_that_gave_less_than_asked_leaves_the_view() -> None:
    """Nothing more of it is due (or it is all leased): it is not picked again until a
    note or a read brings it back. The same for a destination whose jobs another lease
    took while this one was under way, and for one the store says has all its jobs
    leased."""
    turns = _view("a.test", "b.test", "c.test", "d.test")
    assert turns.pick(NOW, 3) == ["a.test", "b.test", "c.test"]
    turns.read([("c.test", None)], last=False)  # c.test's jobs leased elsewhere meanwhile
    a, b = (_job(d, NOW - timedelta(minutes=4)) for d in ("a.test", "b.test"))
    turns.settle(NOW, {"a.test": 2, "b.test": 1, "c.test": 1}, [a, b])
    turns.read([("d.test", None)], last=False)
    assert turns.pick(NOW + timedelta(seconds=1), 4) == ["b.test"]


def test_served_destinations_are_stamped_in_the_order_they_were_served() -> None:
    """The one given the most jobs last, ties in turn order (then a destination the lease
    took by the earliest-due step, unknown to the view until then), as the Redis queue
    does: that is the order of their next turns."""
    turns = _view("z.test", "y.test", "x.test")
    assert turns.pick(NOW, 3) == ["z.test", "y.test", "x.test"]
    due = NOW - timedelta(minutes=10)
    leased = [_job(d, due) for d in ("z.test", "z.test", "y.test", "x.test", "w.test")]
    turns.settle(NOW, {"z.test": 2, "y.test": 1, "x.test": 1}, leased)
    assert turns.pick(NOW + timedelta(seconds=1), 5) == ["y.test", "x.test", "w.test", "z.test"]


def test_a_destination_is_handed_out_once_until_its_lease_settles() -> None:
    """Concurrent leases (PostgreSQL) start with other destinations: noting or reading
    again a destination whose turn does not change adds no second way to pick it, and
    noting another destination does not give back those picked."""
    turns = _view("a.test", "b.test")
    assert turns.pick(NOW, 1) == ["a.test"]
    turns.settle(NOW, {"a.test": 1}, [_job("a.test", NOW - timedelta(minutes=2))])
    turns.note("a.test", NOW - timedelta(minutes=5))  # earlier, but served since: same turn
    turns.read([("b.test", NOW - timedelta(minutes=1))], last=False)  # the same due again
    later = NOW + timedelta(seconds=1)
    assert [turns.pick(later, 1), turns.pick(later, 1), turns.pick(later, 1)] == [
        ["b.test"],
        ["a.test"],
        [],
    ]
    turns.note("c.test", NOW - timedelta(minutes=1))
    assert turns.pick(NOW + timedelta(seconds=1), 3) == ["c.test"]


def test_a_note_only_ever_brings_a_turn_forward() -> None:
    turns = _view("a.test", "b.test")
    turns.note("a.test", NOW + timedelta(hours=1))  # a later job: a.test's turn stays
    turns.note("b.test", NOW - timedelta(minutes=3))  # an earlier one: b.test goes first
    assert turns.pick(NOW, 2) == ["b.test", "a.test"]


def test_a_view_notes_nothing_until_the_store_was_first_read() -> None:
    """A process that only enqueues (an API process on PostgreSQL) keeps no view."""
    turns = _Turns()
    turns.note("a.test", NOW)
    assert turns.due == {}
    turns.read([], last=True)
    turns.note("a.test", NOW)
    assert turns.pick(NOW, 1) == ["a.test"]


def test_what_is_noted_while_the_store_is_read_is_not_undone_by_the_read() -> None:
    """A read of the store may miss a job enqueued while it ran: what is noted meanwhile
    wins where it is earlier, and a destination noted meanwhile is not forgotten at the
    end of the round of reads. A destination the round did not see, nor any note, is."""
    turns = _view("a.test", "b.test", "d.test", "e.test", "f.test")
    turns.reading()
    turns.note("a.test", NOW - timedelta(minutes=10))
    turns.note("a.test", NOW - timedelta(minutes=6))
    turns.note("b.test", NOW - timedelta(seconds=30))
    turns.note("d.test", NOW - timedelta(seconds=30))
    turns.note("c.test", NOW - timedelta(seconds=90))
    rows: list[tuple[str, datetime | None]] = [
        ("g.test", None),  # every job leased, unknown to the view
        ("a.test", None),  # the read saw a.test's jobs leased, not the one noted since
        ("b.test", NOW - timedelta(minutes=7)),  # earlier than noted: the store's
        ("f.test", NOW - timedelta(minutes=8)),
    ]
    turns.read(rows, last=True)
    assert turns.pick(NOW, 7) == ["a.test", "f.test", "b.test", "d.test", "c.test"]


def test_a_failed_read_leaves_notes_working() -> None:
    turns = _view("a.test")
    turns.reading()
    turns.unread()
    turns.note("b.test", NOW)
    assert turns.pick(NOW, 2) == ["a.test", "b.test"]


def test_a_destination_forgotten_by_a_round_of_reads_comes_back_afresh() -> None:
    """Forgotten: neither its due time nor when it was served is kept, so when it has jobs
    again its turn is theirs."""
    turns = _view("a.test", "b.test", "c.test")
    assert turns.pick(NOW, 2) == ["a.test", "b.test"]
    turns.settle(NOW, {"a.test": 2, "b.test": 1}, [_job("a.test", NOW)])
    turns.reading()
    turns.read([], last=True)
    assert turns.due == {} and turns.served == {}
    turns.reading()
    turns.read(
        [("a.test", NOW - timedelta(hours=1)), ("b.test", NOW - timedelta(minutes=30))],
        last=True,
    )
    assert turns.pick(NOW, 3) == ["a.test", "b.test"]


def test_a_destination_served_during_a_round_of_reads_is_not_forgotten_at_its_end() -> None:
    turns = _view("a.test", "b.test")
    turns.reading()
    assert turns.pick(NOW, 1) == ["a.test"]
    turns.settle(NOW, {"a.test": 1}, [_job("a.test", NOW - timedelta(minutes=2))])
    turns.read([("b.test", NOW - timedelta(minutes=1))], last=True)
    assert turns.pick(NOW + timedelta(seconds=1), 2) == ["b.test", "a.test"]


async def test_a_round_of_reads_goes_over_every_destination_a_chunk_at_a_time(
    tmp_path: Path,
) -> None:
    """A read takes the next thousand destinations after the last one read, and a round
    ends with the read that finds fewer: then what the round did not see is forgotten.
    Destinations are named from digits up (``163.com``), which sort before any letter."""
    names = [f"{i:04d}.test" for i in range(1002)]
    async with _queue(tmp_path) as queue:
        jobs = [_job(name) for name in names]
        await queue.enqueue(jobs)  # before the first read: the view notes nothing of it
        await queue._read_destinations()
        assert sorted(queue._turns.due) == names[:1000]
        await queue._read_destinations()
        assert sorted(queue._turns.due) == names
        assert await queue.discard(jobs[0].email_id, [names[0]]) == 1
        await queue._read_destinations()  # a new round: 0000.test is not in it
        await queue._read_destinations()
        assert sorted(queue._turns.due) == names[1:]
        await queue._read_destinations()  # the next round starts from the first again
        assert sorted(queue._turns.due) == names[1:]
        assert queue._read_from == names[1000]


async def test_a_destination_enqueued_elsewhere_joins_the_view_within_a_round(
    tmp_path: Path,
) -> None:
    """Another process's jobs reach this object's view through its reads of the store,
    a round at most a second or so after the last one (unless a lease takes them first by
    the earliest-due step); here the job is due in an hour, so only a read shows it."""
    async with _queue(tmp_path) as queue:
        elsewhere = EmbeddedQueue(queue.db)
        assert await queue.lease("worker-1", 1, 60) == []  # the view is read: nothing
        await elsewhere.enqueue([replace(_job("new.test"), due_at=utcnow() + timedelta(hours=1))])

        async def in_the_view() -> bool:
            assert await queue.lease("worker-1", 1, 60) == []
            return "new.test" in queue._turns.due

        await poll(in_the_view, timeout=10, what="the view to read new.test")


async def test_a_lease_after_a_failed_read_of_the_view_still_leases(tmp_path: Path) -> None:
    """A read that fails fails its lease; the next lease, before the next read is due,
    leases from the store by the earliest-due step."""
    async with _queue(tmp_path) as queue:
        await queue.enqueue([_job("a.test")])
        async with queue.db.write() as conn:
            await conn.execute(text("ALTER TABLE queue_jobs RENAME TO queue_jobs_away"))
        try:
            with pytest.raises(OperationalError):
                await queue.lease("worker-1", 1, 60)
        finally:
            async with queue.db.write() as conn:
                await conn.execute(text("ALTER TABLE queue_jobs_away RENAME TO queue_jobs"))
        [leased] = await queue.lease("worker-1", 1, 60)
        assert leased.destination == "a.test"


def test_a_view_compacts_its_heap_and_keeps_every_turn() -> None:
    """Every change of a turn adds an entry and leaves the old one behind; past a
    thousand or so of those, the heap is built again from the view alone."""
    turns = _view("a.test", "b.test")
    for i in range(1100):  # a.test noted ever earlier: a new entry each time
        turns.note("a.test", NOW - timedelta(hours=1, seconds=i))
    assert len(turns._heap) < 100
    assert turns.pick(NOW, 3) == ["a.test", "b.test"]


def test_a_view_of_many_destinations_is_not_compacted_while_its_leases_are_under_way() -> None:
    """The heap is built again only once it holds more than twice as many entries as
    there are destinations (and a thousand more), not each time it passes a thousand:
    building it again puts back the destinations a lease has picked and not settled."""
    names = [f"{i:04d}.test" for i in range(1100)]
    turns = _Turns()
    turns.read([(name, NOW - timedelta(seconds=2000 - i)) for i, name in enumerate(names)], True)
    assert turns.pick(NOW, 1) == [names[0]]
    turns.note("new.test", NOW)
    assert turns.pick(NOW, 1) == [names[1]]
