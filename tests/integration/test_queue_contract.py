"""The queue contract, run against every adapter and store backend."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import cast

import pytest
import pytest_asyncio
from sqlalchemy import event, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from postline.config import normalize_database_url
from postline.ids import new_id
from postline.queue import Job, Queue, QueueError
from postline.queue.embedded import EmbeddedQueue
from postline.queue.redis import RedisQueue
from postline.store.schema import queue_jobs, worker_heartbeats
from postline.store.types import utcnow
from tests.harness.polling import poll
from tests.harness.stores import embedded_queue


@pytest.fixture(
    params=[
        pytest.param("embedded-sqlite", id="embedded-sqlite"),
        pytest.param("embedded-postgresql", id="embedded-postgresql", marks=pytest.mark.postgres),
        pytest.param("redis", id="redis", marks=pytest.mark.redis),
    ]
)
def adapter(request: pytest.FixtureRequest) -> str:
    """Every adapter, and the embedded one on both stores."""
    return str(request.param)


@pytest.fixture
def store_backend(adapter: str) -> str:
    """The embedded adapter's store, for the shared ``database_url`` fixture."""
    return "postgresql" if adapter == "embedded-postgresql" else "sqlite"


@pytest.fixture
def location(adapter: str, request: pytest.FixtureRequest) -> tuple[str, str]:
    """Where the adapter keeps its jobs: a URL and, for Redis, a fresh key prefix.

    Not async: the database and Redis fixtures are, and pytest-asyncio can only
    set them up on request from outside the running event loop.
    """
    if adapter == "redis":
        return request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
    return normalize_database_url(request.getfixturevalue("database_url")), ""


@pytest_asyncio.fixture
async def queue(adapter: str, location: tuple[str, str]) -> AsyncIterator[Queue]:
    url, prefix = location
    if adapter == "redis":
        redis = RedisQueue(url, prefix=prefix)
        try:
            yield redis
        finally:
            await redis.close()
        return
    async with embedded_queue(url) as embedded:
        yield embedded


@pytest_asyncio.fixture
async def elsewhere(adapter: str, location: tuple[str, str], queue: Queue) -> AsyncIterator[Queue]:
    """A second queue object on the same jobs, as another process would have.

    It asks for ``queue`` only to come after it, which sets the store up.
    """
    url, prefix = location
    if adapter == "redis":
        redis = RedisQueue(url, prefix=prefix)
        try:
            yield redis
        finally:
            await redis.close()
        return
    async with embedded_queue(url) as embedded:  # already migrated: the upgrade is a no-op
        yield embedded


def job(
    destination: str = "dest.test",
    due_in: float = 0,
    body: str | None = None,
    email_id: str | None = None,
) -> Job:
    email_id = email_id or new_id("em_")
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
    before = utcnow()
    first = await queue.lease("w1", 10, 60)
    after = utcnow()
    assert [j.id for j in first] == [due.id]
    assert first[0].recipient_ids == due.recipient_ids
    assert first[0].lease_owner == "w1"
    # The lease's end, as the queue keeps it: 60 s from the lease, on the store's (or the
    # Redis server's) clock, which is this host's give or take a second.
    lease_until = first[0].lease_until
    assert lease_until is not None
    assert before + timedelta(seconds=59) < lease_until < after + timedelta(seconds=61)
    assert await queue.lease("w2", 10, 60) == []


async def test_each_leased_job_carries_its_own_fields(queue: Queue) -> None:
    """A lease of several jobs: each has the email, destination, recipients, body and due
    time of the job enqueued under its id. (Mutation testing: the Redis queue pairing
    each id with its neighbour's fields passed every test that leased one job, or
    counted destinations.)"""
    jobs = {j.id: j for j in (job(f"d{i}.test", due_in=-i) for i in range(3))}
    await queue.enqueue(list(jobs.values()))
    leased = await queue.lease("w1", 10, 60)
    assert sorted(j.id for j in leased) == sorted(jobs)
    for got in leased:
        want = jobs[got.id]
        assert (got.email_id, got.destination, got.recipient_ids, got.body_ref) == (
            want.email_id,
            want.destination,
            want.recipient_ids,
            want.body_ref,
        )
        assert abs(got.due_at - want.due_at) < timedelta(milliseconds=1)


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
    assert not await queue.ack(first)
    assert (await queue.depth()) == {"dest.test": 1}


#: What a worker whose lease lapsed might still try on its job, each a call that
#: must change nothing once the job is another worker's, and say so (falsy).
STALE_CALLS: dict[str, Callable[[Queue, Job], Awaitable[bool | int]]] = {
    "ack": lambda queue, stale: queue.ack(stale),
    "ack_all": lambda queue, stale: queue.ack_all([stale]),
    "retry": lambda queue, stale: queue.retry(stale, utcnow() - timedelta(hours=1), []),
    "release": lambda queue, stale: queue.release(stale),
    "extend": lambda queue, stale: queue.extend(stale, 3600),
    "confirm": lambda queue, stale: queue.confirm(stale, 3600),
    "park": lambda queue, stale: queue.park(stale, utcnow() + timedelta(hours=1)),
}
#: The second owner's lease: long enough for the checks made while it holds the job,
#: short enough to wait for it to lapse (which a stale extend would push an hour out).
SECOND_LEASE = 2


@pytest.mark.parametrize("call", sorted(STALE_CALLS))
async def test_a_stale_owner_changes_nothing_and_says_so(queue: Queue, call: str) -> None:
    original = job()
    await queue.enqueue([original])
    (stale,) = await queue.lease("w1", 10, 0.01)
    taken = await poll_lease(queue, "w2", SECOND_LEASE)  # w1's lease lapsed: w2 has it
    assert taken.id == stale.id and stale.lease_owner == "w1"
    assert not await STALE_CALLS[call](queue, stale)
    assert await queue.depth() == {"dest.test": 1}  # not acked
    assert await queue.lease("w3", 10, 60) == []  # still w2's: not released, nor retried
    # Nor extended, nor parked: w2's lease lapses when it should, and the job is as it was.
    again = await poll_lease(queue, "w3")
    assert (again.id, again.attempt, again.recipient_ids) == (
        original.id,
        0,
        original.recipient_ids,
    )
    assert abs(again.due_at - original.due_at) < timedelta(milliseconds=1)


@pytest.mark.parametrize("renew", ["extend", "confirm"])
async def test_extend_keeps_the_lease(queue: Queue, renew: str) -> None:
    """Extended, a short lease outlives its first term; its twin, not extended, does not.
    Confirmed with less than most of a lease left, it is extended just the same.

    The lease lives in the queue, not in the (frozen) job the worker holds. On a loaded
    machine the twin's 0.2 s may be over before w2's first try: w2 takes the twin, at
    once or later, and never the extended job.
    """
    kept, twin = job(), job("other.test")
    await queue.enqueue([kept, twin])
    leased = {j.id: j for j in await queue.lease("w1", 10, 0.2)}
    if renew == "extend":
        assert await queue.extend(leased[kept.id], 60)
    else:
        assert await queue.confirm(leased[kept.id], 60)
    taken: list[str] = []

    async def twin_free() -> list[str] | None:
        taken.extend(j.id for j in await queue.lease("w2", 10, 60))
        return taken if twin.id in taken else None

    await poll(twin_free, timeout=5, what="the lease not extended to run out")
    assert taken == [twin.id]
    assert await queue.lease("w3", 10, 60) == []  # the extended one is still w1's


async def test_ack_removes_and_retry_reschedules(queue: Queue) -> None:
    a, b = job(), job()
    await queue.enqueue([a, b])
    leased = {j.id: j for j in await queue.lease("w1", 10, 60)}
    assert await queue.ack(leased[a.id])
    assert await queue.retry(leased[b.id], utcnow() + timedelta(hours=1), b.recipient_ids[:1])
    assert await queue.depth() == {"dest.test": 1}
    assert await queue.lease("w1", 10, 60) == []
    # Retried, the job is nobody's: w1's second retry would bring it forward, and does not.
    assert not await queue.retry(leased[b.id], utcnow(), b.recipient_ids[:1])
    assert await queue.lease("w1", 10, 60) == []
    assert not await queue.ack(leased[a.id])  # gone already


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
    assert await queue.release(leased)
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


async def test_a_heartbeat_keeps_a_worker_live_until_it_runs_out_or_retires(
    queue: Queue, elsewhere: Queue
) -> None:
    await queue.beat("steady", 60)
    await queue.beat("fading", 0.1)
    await queue.beat("leaving", 60)
    assert {"steady", "fading", "leaving"} <= await elsewhere.workers()
    await queue.retire("leaving")

    async def faded() -> bool:
        return "fading" not in await elsewhere.workers()

    await poll(faded, timeout=5, what="the short heartbeat to run out")
    live = await elsewhere.workers()
    assert "steady" in live and "leaving" not in live
    await queue.beat("fading", 60)  # beating again brings a worker back
    assert "fading" in await elsewhere.workers()


async def test_a_dead_owners_job_is_leased_again_before_its_lease_ends(
    queue: Queue, elsewhere: Queue
) -> None:
    await queue.enqueue([job(), job("other.test")])
    await queue.beat("killed", 0.1)
    await elsewhere.beat("survivor", 60)
    leased = await queue.lease("killed", 10, 3600)
    assert len(leased) == 2
    assert await elsewhere.lease("survivor", 10, 60) == []

    async def freed() -> int:
        return await elsewhere.recover_expired()

    assert await poll(freed, timeout=5, what="the dead owner's jobs to be freed") == 2
    again = await elsewhere.lease("survivor", 10, 60)
    assert sorted(j.id for j in again) == sorted(j.id for j in leased)
    assert all(j.lease_owner == "survivor" for j in again)
    # The dead owner cannot extend or ack what is now the survivor's.
    assert not await queue.extend(leased[0], 3600)
    assert await queue.ack_all(leased) == 0
    assert sum((await queue.depth()).values()) == 2
    assert await elsewhere.ack_all(again) == 2
    assert await queue.depth() == {}


async def test_a_retired_owners_job_is_free_at_the_next_recovery(queue: Queue) -> None:
    await queue.enqueue([job()])
    await queue.beat("w1", 60)
    (leased,) = await queue.lease("w1", 10, 3600)
    await queue.retire("w1")
    assert await queue.recover_expired() == 1
    # Freed means nobody's: w1, back from a pause, can no longer extend or finish it.
    assert not await queue.extend(leased, 3600)
    assert not await queue.ack(leased)
    (again,) = await queue.lease("w2", 10, 60)
    assert again.id == leased.id


async def test_a_retired_owners_job_is_free_whatever_its_hosts_name(queue: Queue) -> None:
    """An engine's owner is ``<hostname>:<id>``: a container's hostname starts with a
    digit, a desktop's often with a capital. (Mutation testing: a check for "has an
    owner" turned into one on the owner's first letters still passed every test.)"""
    owners = [f"{host}:{new_id()}" for host in ("4f9c2a1b7d3e", "DESKTOP-7", "mx-1")]
    await queue.enqueue([job(f"d{i}.test") for i in range(len(owners))])
    for owner in owners:
        await queue.beat(owner, 60)
        assert len(await queue.lease(owner, 1, 3600)) == 1
        await queue.retire(owner)
    assert await queue.recover_expired() == len(owners)
    assert await queue.in_flight() == {}


async def test_a_live_owners_job_is_not_stolen(queue: Queue, elsewhere: Queue) -> None:
    await queue.enqueue([job()])
    await queue.beat("alive", 60)
    (leased,) = await queue.lease("alive", 10, 3600)
    assert await elsewhere.recover_expired() == 0
    assert await queue.recover_expired() == 0
    assert await elsewhere.lease("thief", 10, 60) == []
    assert await queue.extend(leased, 3600)
    assert await queue.in_flight() == {"dest.test": 1}


async def test_body_refs_depth_and_in_flight(queue: Queue) -> None:
    shared_body = "em_shared"
    jobs = [job("a.test", body=shared_body), job("b.test", body=shared_body), job("b.test")]
    await queue.enqueue(jobs)
    assert await queue.body_refs() == {shared_body, jobs[2].body_ref}
    assert await queue.depth() == {"a.test": 1, "b.test": 2}
    await queue.lease("w1", 1, 60)
    assert sum((await queue.in_flight()).values()) == 1


@pytest.mark.parametrize(
    "adapter",
    ["embedded-sqlite", pytest.param("embedded-postgresql", marks=pytest.mark.postgres)],
    indirect=True,
)
async def test_body_refs_fail_closed_when_the_store_cannot_answer(queue: Queue) -> None:
    """Orphan cleanup deletes the spooled bodies ``body_refs`` does not name: a store that
    cannot answer must reach it as a QueueError naming the cause, never as no bodies.
    (Mutation testing: the error's text and cause were read by no test.)"""
    assert isinstance(queue, EmbeddedQueue)
    await queue.enqueue([job()])
    async with queue.db.write() as conn:
        await conn.execute(text("ALTER TABLE queue_jobs RENAME TO queue_jobs_away"))
    try:
        with pytest.raises(QueueError) as raised:
            await queue.body_refs()
    finally:
        async with queue.db.write() as conn:
            await conn.execute(text("ALTER TABLE queue_jobs_away RENAME TO queue_jobs"))
    cause = raised.value.__cause__
    assert cause is not None
    assert str(raised.value) == f"cannot list queued bodies: {type(cause).__name__}"
    assert len(await queue.body_refs()) == 1


@pytest.mark.parametrize("count", [0, 1])
async def test_enqueue_nothing_or_one(queue: Queue, count: int) -> None:
    await queue.enqueue([job() for _ in range(count)])
    assert sum((await queue.depth()).values()) == count


@pytest.mark.parametrize(
    "adapter",
    ["embedded-sqlite", pytest.param("embedded-postgresql", marks=pytest.mark.postgres)],
    indirect=True,
)
async def test_an_enqueue_looks_its_emails_up_a_thousand_at_a_time(queue: Queue) -> None:
    """Which pairs have a job already is read once per 1,000 emails of the batch, not once
    per email: a group commit enqueues hundreds of emails in its transaction, on SQLite
    under the one writer. (Mutation testing: a lookup per email, or a thousand lookups,
    found the same pairs, and every test passed.)"""
    assert isinstance(queue, EmbeddedQueue)
    lookups = 0

    def _count(conn: object, cursor: object, statement: str, *_: object) -> None:
        nonlocal lookups
        if statement.lstrip().upper().startswith("SELECT") and "queue_jobs" in statement:
            lookups += 1

    engine = queue.db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", _count)
    try:
        await queue.enqueue([job() for _ in range(1001)])
    finally:
        event.remove(engine, "before_cursor_execute", _count)
    assert lookups == 2
    assert await queue.depth() == {"dest.test": 1001}


async def test_one_job_per_email_and_destination(queue: Queue) -> None:
    first = job("a.test")
    again = job("a.test", email_id=first.email_id)  # e.g. rebuilt by the recovery sweep
    other_destination = job("b.test", email_id=first.email_id)
    first_of_batch = job("c.test")
    twice_in_one_batch = [first_of_batch, job("c.test", email_id=first_of_batch.email_id)]
    await queue.enqueue([first])
    await queue.enqueue([again, other_destination, *twice_in_one_batch])
    assert await queue.depth() == {"a.test": 1, "b.test": 1, "c.test": 1}
    leased = {j.id for j in await queue.lease("w1", 10, 60)}
    assert leased == {first.id, other_destination.id, twice_in_one_batch[0].id}
    # While leased too, and after a retry: the pair still has its job.
    await queue.enqueue([job("a.test", email_id=first.email_id)])
    assert await queue.depth() == {"a.test": 1, "b.test": 1, "c.test": 1}


async def test_a_finished_pair_may_be_enqueued_again(queue: Queue) -> None:
    first = job()
    await queue.enqueue([first])
    (leased,) = await queue.lease("w1", 10, 60)
    await queue.ack(leased)
    second = job(email_id=first.email_id)
    await queue.enqueue([second])
    assert [j.id for j in await queue.lease("w1", 10, 60)] == [second.id]


async def test_lease_is_fair_across_destinations(queue: Queue) -> None:
    # A big backlog, all of it older than the small destination's jobs.
    big = [job("big.test", due_in=-3600 + i * 0.01) for i in range(2000)]
    small = [job("small.test", due_in=-1) for _ in range(10)]
    await queue.enqueue(big)
    await queue.enqueue(small)
    # All 2000 of one enqueue, which the Redis queue sends in scripts of 500 jobs.
    assert await queue.depth() == {"big.test": 2000, "small.test": 10}
    served: list[str] = []
    for _ in range(20):
        (leased,) = await queue.lease("w1", 1, 60)
        served.append(leased.destination)
        await queue.ack(leased)
    assert served.count("small.test") == 10, served


async def test_one_lease_takes_destinations_in_turn(queue: Queue) -> None:
    await queue.enqueue([job("big.test", due_in=-3600 + i) for i in range(50)])
    await queue.enqueue([job(d, due_in=-1) for d in ("a.test", "b.test") for _ in range(2)])
    leased = await queue.lease("w1", 7, 60)
    counts = Counter(j.destination for j in leased)
    assert counts == {"big.test": 3, "a.test": 2, "b.test": 2}
    assert [j.due_at for j in leased] == sorted(j.due_at for j in leased)


async def test_a_held_back_destination_gets_its_turns_not_the_slots_the_others_leave(
    queue: Queue,
) -> None:
    """``held_back``: destinations whose breaker is open for the worker. Their jobs are
    leased only to be parked, so a backlog behind one must not take the slots the
    other destinations leave (it held 90% of them, parked one by one, and slowed the
    rest of the mail by 88%). Alone, it gets every slot like any destination."""
    await queue.enqueue([job("big.test", due_in=-3600 + i) for i in range(50)])
    await queue.enqueue([job(d, due_in=-1) for d in ("a.test", "b.test") for _ in range(2)])
    leased = await queue.lease("w1", 30, 60, held_back={"big.test"})
    counts = Counter(j.destination for j in leased)
    assert (counts["a.test"], counts["b.test"]) == (2, 2)
    # Its turns: at most its share of the three destinations' (26 without held_back).
    assert 1 <= counts["big.test"] <= 10, counts
    alone = await queue.lease("w1", 30, 60, held_back={"big.test"})
    assert Counter(j.destination for j in alone) == {"big.test": 30}


async def test_a_lease_gives_the_odd_slot_to_the_destination_whose_turn_comes_first(
    queue: Queue,
) -> None:
    """Round after round: three slots over two destinations go a, b, a, even though
    b's other jobs are due before a's. (Mutation testing: taking the odd slot from a
    instead still passed every other test, the earliest-due step making up the count.)"""
    await queue.enqueue([job("a.test", due_in=-60), job("a.test", due_in=-1), job("a.test")])
    await queue.enqueue([job("b.test", due_in=-30) for _ in range(3)])
    leased = await queue.lease("w1", 3, 60)
    assert Counter(j.destination for j in leased) == {"a.test": 2, "b.test": 1}


async def test_a_lease_takes_no_more_than_its_limit(queue: Queue) -> None:
    """Also when the destination whose turn comes first has fewer jobs than its share:
    the other slots go to the next due jobs, up to the limit and no further."""
    await queue.enqueue([job("a.test", due_in=-60)])
    await queue.enqueue([job("x.test", due_in=-1) for _ in range(5)])
    leased = await queue.lease("w1", 3, 60)
    assert Counter(j.destination for j in leased) == {"a.test": 1, "x.test": 2}


async def test_a_rebuilt_job_keeps_its_attempt_count(queue: Queue) -> None:
    """Recovery enqueues a job again with the attempts its recipients had
    (``recovery.restore_missing_jobs``): the count goes on from there, not from 0."""
    rebuilt = dataclasses.replace(job(), attempt=3)
    await queue.enqueue([rebuilt])
    (leased,) = await queue.lease("w1", 10, 60)
    assert (leased.id, leased.attempt) == (rebuilt.id, 3)
    assert leased.recipient_ids == rebuilt.recipient_ids
    await queue.retry(leased, utcnow() - timedelta(seconds=1), leased.recipient_ids)
    (again,) = await queue.lease("w1", 10, 60)
    assert again.attempt == 4


async def test_retry_and_release_keep_the_job_fields(queue: Queue) -> None:
    original = job()
    await queue.enqueue([original])
    (leased,) = await queue.lease("w1", 10, 60)
    assert leased.email_id == original.email_id and leased.body_ref == original.body_ref
    assert abs((leased.due_at - original.due_at).total_seconds()) < 1e-5
    assert leased.created_at is not None
    await queue.retry(leased, utcnow() - timedelta(seconds=1), [])
    (again,) = await queue.lease("w2", 10, 60)
    assert again.recipient_ids == [] and again.attempt == 1
    await queue.release(again)
    (third,) = await queue.lease("w3", 10, 60)
    assert (third.attempt, third.lease_owner) == (1, "w3")
    assert await queue.in_flight() == {"dest.test": 1}


async def test_every_destination_is_served_before_any_is_served_twice(queue: Queue) -> None:
    destinations = [f"d{i}.test" for i in range(6)]
    oldest = [job("d0.test", due_in=-60 + i) for i in range(3)]
    await queue.enqueue(
        [*oldest, *(job(d, due_in=-10 + i) for i in range(3) for d in destinations)]
    )
    first_round = [(await queue.lease("w1", 1, 60))[0].destination for _ in destinations]
    assert sorted(first_round) == destinations
    second_round = [j.destination for j in await queue.lease("w1", len(destinations), 60)]
    assert sorted(second_round) == destinations


#: What one delivery takes, at least, in the fairness test below: the leases of a
#: worker are paced by its deliveries, and this pace turns "within a round of reads
#: of the store" (a second or two, see ``postline.queue.embedded``) into a number
#: of leases however fast the machine runs them.
DELIVERY = 0.05
#: Big jobs that may go before the new destination's first: 5 s of leases at that
#: pace, several rounds of reads however loaded the machine.
MOST_BEFORE = 100


@pytest.mark.parametrize("way", ["lease", "refill"])
async def test_jobs_enqueued_elsewhere_are_leased_fairly(
    queue: Queue, elsewhere: Queue, way: str
) -> None:
    """Also when every lease is made inside another transaction (``refill``: the
    recorder's, which is how a busy engine leases). Mutation testing: with only
    ``lease`` reading the destinations, a refilled engine served the new destination
    after the whole backlog, and a backlog behind an open breaker stalled the rest."""
    if way == "refill" and not isinstance(queue, EmbeddedQueue):
        pytest.skip("only a queue that shares the store leases inside its transactions")
    # A backlog that cannot drain during the test: far more jobs than the test leases,
    # all older than the new destination's. Earliest-due-first would serve them all first.
    big = [job("big.test", due_in=-3600 + i * 0.01) for i in range(5 * MOST_BEFORE)]
    await elsewhere.enqueue(big)

    async def lease(limit: int) -> list[Job]:
        if not isinstance(queue, EmbeddedQueue) or way == "lease":
            return await queue.lease("w1", limit, 60)
        async with queue.db.write() as conn:
            return await queue.lease_in(conn, "w1", limit, 60)

    async def lease_one() -> Job:
        (leased,) = await lease(1)  # and never acked
        await asyncio.sleep(DELIVERY)
        return leased

    assert (await lease_one()).destination == "big.test"  # the big destination is all there is
    # A destination this queue object has not seen yet, enqueued by another process.
    small = [job("small.test", due_in=-1) for _ in range(3)]
    await elsewhere.enqueue(small)
    before = 0
    while (await lease_one()).destination == "big.test":
        before += 1
        assert before <= MOST_BEFORE, f"{before} big jobs went before small.test's first"
    # From then on it takes its turn, one each, until its jobs are all leased.
    after = [(await lease_one()).destination for _ in range(6)]
    assert after == ["big.test", "small.test"] * 2 + ["big.test"] * 2, after


async def test_lease_fills_free_slots_with_jobs_of_any_destination(
    queue: Queue, elsewhere: Queue
) -> None:
    await queue.enqueue([job("known.test")])
    assert len(await queue.lease("w1", 1, 60)) == 1
    # Destinations enqueued by another process since this one last looked.
    unknown = [job(f"new{i}.test") for i in range(5)]
    await elsewhere.enqueue(unknown)
    leased = await queue.lease("w1", 10, 60)
    assert {j.id for j in leased} == {j.id for j in unknown}


async def test_jobs_not_yet_due_stay_after_their_destination_was_served(queue: Queue) -> None:
    now, later = [job("a.test", due_in=-1) for _ in range(2)], [job("a.test", due_in=3600)]
    await queue.enqueue([*now, *later])
    assert {j.id for j in await queue.lease("w1", 2, 60)} == {j.id for j in now}
    assert await queue.lease("w1", 10, 60) == []
    assert await queue.lease("w2", 1, 60) == []


async def test_two_queue_objects_never_share_a_job(queue: Queue, elsewhere: Queue) -> None:
    jobs = [job(f"d{i % 4}.test", due_in=-i) for i in range(60)]
    await queue.enqueue(jobs)
    results = await asyncio.gather(
        *(q.lease(f"w{i}", 5, 60) for i, q in enumerate([queue, elsewhere] * 8))
    )
    leased = [j.id for batch in results for j in batch]
    assert len(leased) == len(set(leased)) == 60


async def test_a_big_lease_takes_one_job_of_each_of_many_destinations(queue: Queue) -> None:
    await queue.enqueue([job(f"d{i}.test", due_in=-1) for i in range(600) for _ in range(2)])
    leased = await queue.lease("w1", 600, 60)
    assert len({j.destination for j in leased}) == len({j.id for j in leased}) == 600
    # Every job the lease took is one it returned: none leased and lost between the
    # statements of a big lease (SQLite claims 200 destinations per statement).
    assert sum((await queue.in_flight()).values()) == 600


# Rate buckets (``Queue.take_token``): the per-key rate limits, shared by every process.

#: One token per 100 s: no refill worth counting while a test runs, however slow the machine.
SLOW = 0.01


async def test_a_bucket_allows_its_burst_then_refuses_with_a_wait(queue: Queue) -> None:
    takes = [await queue.take_token("key:a", SLOW, 3) for _ in range(4)]
    assert [t.allowed for t in takes] == [True, True, True, False]
    assert [round(t.remaining) for t in takes[:3]] == [2, 1, 0]
    assert all(t.wait == 0 for t in takes[:3])
    refused = takes[3]
    assert refused.remaining < 1
    # A whole token at 0.01/s is 100 s away, less what refilled since the bucket was full.
    assert 90 < refused.wait <= 100
    again = await queue.take_token("key:a", SLOW, 3)
    assert not again.allowed and 0 < again.wait <= refused.wait, "a refusal takes nothing"


async def test_a_take_of_many_tokens_is_all_or_nothing(queue: Queue) -> None:
    """Email sends take a token per recipient (``ratelimit``): one take, whole or refused."""
    first = await queue.take_token("key:n", SLOW, 10, count=7)
    assert first.allowed and round(first.remaining) == 3
    refused = await queue.take_token("key:n", SLOW, 10, count=4)
    assert not refused.allowed and round(refused.remaining) == 3, "a refusal takes nothing"
    # One token at 0.01/s is 100 s away, less what refilled since.
    assert 90 < refused.wait <= 100
    rest = await queue.take_token("key:n", SLOW, 10, count=3)
    assert rest.allowed and rest.remaining < 1
    with pytest.raises(ValueError):
        await queue.take_token("key:n", SLOW, 10, count=11)


async def test_buckets_are_separate(queue: Queue) -> None:
    assert (await queue.take_token("key:a", SLOW, 1)).allowed
    assert not (await queue.take_token("key:a", SLOW, 1)).allowed
    assert (await queue.take_token("key:b", SLOW, 1)).allowed


async def test_a_bucket_refills_at_its_rate_up_to_its_burst(queue: Queue) -> None:
    rate, burst = 20.0, 2
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    refused = await queue.take_token("key:r", rate, burst)
    while refused.allowed:  # emptied, however fast or slow the takes run
        assert loop.time() < deadline, "the bucket never ran out"
        refused = await queue.take_token("key:r", rate, burst)
    assert 0 < refused.wait <= 1 / rate
    # Poll, paced by the wait the bucket gives, until it has a token again.
    taken = refused
    while not taken.allowed:
        assert loop.time() < deadline, "the bucket never refilled"
        await asyncio.sleep(taken.wait)
        taken = await queue.take_token("key:r", rate, burst)
    # Long enough idle to refill many times over: full, never more than the burst.
    await asyncio.sleep(5 * burst / rate)
    full = await queue.take_token("key:r", rate, burst)
    assert full.allowed and full.remaining == pytest.approx(burst - 1, abs=1e-3)


async def test_two_queue_objects_share_one_bucket(queue: Queue, elsewhere: Queue) -> None:
    """What "holds across processes" means: the budget is the bucket's, not the process's."""
    assert (await queue.take_token("key:s", SLOW, 2)).allowed
    assert (await elsewhere.take_token("key:s", SLOW, 2)).allowed
    assert not (await queue.take_token("key:s", SLOW, 2)).allowed
    assert not (await elsewhere.take_token("key:s", SLOW, 2)).allowed


async def test_concurrent_takes_never_overspend_a_bucket(queue: Queue, elsewhere: Queue) -> None:
    takes = await asyncio.gather(
        *(q.take_token("key:c", SLOW, 10) for q in [queue, elsewhere] * 15)
    )
    assert sum(t.allowed for t in takes) == 10


async def test_a_bucket_that_could_never_hold_a_token_is_an_error(queue: Queue) -> None:
    for rate, burst in [(0.0, 1), (-1.0, 1), (float("nan"), 1), (float("inf"), 1), (1.0, 0)]:
        with pytest.raises(ValueError, match="rate bucket"):
            await queue.take_token("key:x", rate, burst)


# -- parking: jobs waiting behind an open breaker ------------------------------------------


async def test_park_waits_until_then_keeps_attempt_and_recipients(queue: Queue) -> None:
    original = job()
    await queue.enqueue([original])
    (leased,) = await queue.lease("w1", 10, 60)
    await queue.retry(leased, utcnow(), original.recipient_ids)  # one real attempt
    (leased,) = await queue.lease("w1", 10, 60)
    until = utcnow() + timedelta(seconds=0.5)
    await queue.park(leased, until)
    assert await queue.lease("w1", 10, 60) == []  # waiting, not leased
    assert await queue.depth() == {"dest.test": 1}
    assert await queue.in_flight() == {}
    again = await poll_lease(queue)
    assert again.attempt == 1  # the park counted nothing
    assert again.recipient_ids == original.recipient_ids
    assert abs(again.due_at - until) < timedelta(milliseconds=1)


async def test_park_by_a_stale_owner_changes_nothing(queue: Queue) -> None:
    await queue.enqueue([job()])
    (leased,) = await queue.lease("w1", 10, 0.01)
    taken = await poll_lease(queue, "w2")
    assert not await queue.park(leased, utcnow() + timedelta(hours=1))  # w1 lost it to w2
    assert await queue.in_flight() == {"dest.test": 1}
    await queue.release(taken)
    assert [j.id for j in await queue.lease("w3", 10, 60)] == [taken.id]


async def test_release_parked_makes_the_destinations_parked_jobs_due_now(
    queue: Queue, elsewhere: Queue
) -> None:
    parked = [job(), job(), job(destination="other.test")]
    await queue.enqueue(parked)
    leased = await queue.lease("w1", 10, 60)
    for held in leased:
        assert await queue.park(held, utcnow() + timedelta(hours=1))
    assert await queue.lease("w1", 10, 60) == []
    # Another process's worker saw the destination recover: it frees every worker's jobs.
    assert await elsewhere.release_parked("dest.test") == 2
    again = await queue.lease("w2", 10, 60)
    assert sorted(j.id for j in again) == sorted(j.id for j in parked[:2])
    assert all(j.attempt == 0 for j in again)
    assert await queue.release_parked("dest.test") == 0  # leased: not parked any more


async def test_release_parked_leaves_ordinary_retries_alone(queue: Queue) -> None:
    backoff, parked = job(), job()
    await queue.enqueue([backoff, parked])
    leased = {j.id: j for j in await queue.lease("w1", 10, 60)}
    later = utcnow() + timedelta(hours=1)
    await queue.retry(leased[backoff.id], later, backoff.recipient_ids)
    await queue.park(leased[parked.id], later)
    assert await queue.release_parked("dest.test") == 1
    assert [j.id for j in await queue.lease("w1", 10, 60)] == [parked.id]


async def test_a_parked_job_retried_later_is_not_released(queue: Queue) -> None:
    await queue.enqueue([job()])
    (leased,) = await queue.lease("w1", 10, 60)
    await queue.park(leased, utcnow() + timedelta(seconds=0.3))
    leased = await poll_lease(queue)
    # Its trial: a real attempt, backed off for an hour, is no longer parked.
    await queue.retry(leased, utcnow() + timedelta(hours=1), leased.recipient_ids)
    assert await queue.release_parked("dest.test") == 0
    assert await queue.lease("w1", 10, 60) == []


async def test_release_parked_leaves_a_park_that_ended_alone(queue: Queue) -> None:
    """A park that has ended is due already, in its place among the earliest due:
    releasing moves it to nothing, and counts it not. (Mutation testing: without
    the ``due_at > now`` condition every contract test still passed.)"""
    await queue.enqueue([job()])
    (leased,) = await queue.lease("w1", 10, 60)
    ended = utcnow() - timedelta(seconds=1)
    assert await queue.park(leased, ended)
    assert await queue.release_parked("dest.test") == 0
    (again,) = await queue.lease("w1", 10, 60)
    assert abs(again.due_at - ended) < timedelta(milliseconds=1)


@pytest.mark.parametrize(
    "adapter",
    ["embedded-sqlite", pytest.param("embedded-postgresql", marks=pytest.mark.postgres)],
    indirect=True,
)
async def test_release_parked_leaves_a_leased_job_to_its_worker(queue: Queue) -> None:
    """Processes sharing PostgreSQL each read their own clock: one whose clock runs ahead
    may lease a parked job that another still sees parked. Releasing there leaves the
    lease as it is. (The row is leased here by hand: one clock cannot run ahead of
    itself. Mutation testing: without the ``not leased`` condition every contract test
    still passed.)"""
    assert isinstance(queue, EmbeddedQueue)
    await queue.enqueue([job()])
    (leased,) = await queue.lease("w1", 10, 60)
    until = utcnow() + timedelta(hours=1)
    assert await queue.park(leased, until)
    lease_until = utcnow() + timedelta(seconds=60)
    async with queue.db.write() as conn:
        await conn.execute(
            update(queue_jobs)
            .where(queue_jobs.c.id == leased.id)
            .values(lease_owner="w2", lease_until=lease_until)
        )
    assert await queue.release_parked("dest.test") == 0
    async with queue.db.read() as conn:
        row = (await conn.execute(select(queue_jobs).where(queue_jobs.c.id == leased.id))).one()
    assert (row.lease_owner, row.due_at, row.parked_until) == ("w2", until, until)


async def poll_lease(queue: Queue, owner: str = "w1", lease_seconds: float = 60) -> Job:
    """The next job ``queue`` leases, once one comes due."""
    leased = await poll(
        lambda: queue.lease(owner, 1, lease_seconds), timeout=10, what="a job to come due"
    )
    return cast(Job, leased[0])


async def test_discard_removes_the_emails_jobs_for_those_destinations(queue: Queue) -> None:
    cancelled, other = job("a.test"), job("a.test")
    kept = job("b.test", email_id=cancelled.email_id, body=cancelled.body_ref)
    scheduled = job("c.test", due_in=3600, email_id=cancelled.email_id, body="em_scheduled")
    await queue.enqueue([cancelled, other, kept, scheduled])
    assert await queue.discard(cancelled.email_id, ["a.test", "c.test", "d.test"]) == 2
    assert await queue.depth() == {"a.test": 1, "b.test": 1}
    assert await queue.body_refs() == {other.body_ref, cancelled.body_ref}
    assert {j.id for j in await queue.lease("w1", 10, 60)} == {other.id, kept.id}
    # Nothing left to discard; an unknown email or no destination is no error.
    assert await queue.discard(cancelled.email_id, ["a.test", "c.test"]) == 0
    assert await queue.discard(new_id("em_"), ["a.test"]) == 0
    assert await queue.discard(cancelled.email_id, []) == 0
    assert await queue.depth() == {"a.test": 1, "b.test": 1}


async def test_discard_leaves_a_leased_job_to_its_worker(queue: Queue) -> None:
    leased_job = job("a.test")
    await queue.enqueue([leased_job])
    (leased,) = await queue.lease("w1", 10, 60)
    assert await queue.discard(leased_job.email_id, ["a.test"]) == 0
    assert await queue.depth() == {"a.test": 1}
    assert await queue.in_flight() == {"a.test": 1}
    assert await queue.ack(leased)
    assert await queue.depth() == {}


async def test_discard_takes_a_job_whose_lease_ended(queue: Queue) -> None:
    lapsed = job("a.test")
    await queue.enqueue([lapsed])
    (leased,) = await queue.lease("w1", 10, 0.01)

    async def discarded() -> bool:
        return await queue.discard(lapsed.email_id, ["a.test"]) == 1

    await poll(discarded, timeout=5, what="the job to be discarded once its lease ended")
    assert await queue.depth() == {}
    assert sum((await queue.in_flight()).values()) == 0
    assert not await queue.ack(leased), "the late worker is told its job went"


async def test_a_discarded_pair_may_be_enqueued_again(queue: Queue) -> None:
    first = job()
    await queue.enqueue([first])
    assert await queue.discard(first.email_id, [first.destination]) == 1
    again = job(email_id=first.email_id)
    await queue.enqueue([again])
    assert [j.id for j in await queue.lease("w1", 10, 60)] == [again.id]


class _RolledBack(Exception):
    """Raised to roll back the caller's transaction."""


@pytest.mark.parametrize(
    "adapter",
    ["embedded-sqlite", pytest.param("embedded-postgresql", marks=pytest.mark.postgres)],
    indirect=True,
)
@pytest.mark.parametrize("call", ["ack", "ack_all", "retry", "park"])
async def test_the_embedded_queue_finishes_a_job_in_the_callers_transaction(
    queue: Queue, call: str
) -> None:
    """The recorder acks, retries or parks in the transaction that records the outcome:
    a rollback of it (a crash before the commit) leaves the job as it was, leased."""
    assert isinstance(queue, EmbeddedQueue)
    await queue.enqueue([job()])
    (leased,) = await queue.lease("w1", 1, 60)
    finish: Callable[[AsyncConnection], Awaitable[bool | int]] = {
        "ack": lambda conn: queue.ack(leased, conn),
        "ack_all": lambda conn: queue.ack_all([leased], conn),
        "retry": lambda conn: queue.retry(leased, utcnow(), [], conn),
        "park": lambda conn: queue.park(leased, utcnow(), conn),
    }[call]
    with pytest.raises(_RolledBack):
        async with queue.db.write() as conn:
            assert await finish(conn)
            raise _RolledBack
    assert await queue.in_flight() == {"dest.test": 1}  # still w1's, not finished
    assert await queue.ack(leased)


@pytest.mark.parametrize(
    "adapter",
    ["embedded-sqlite", pytest.param("embedded-postgresql", marks=pytest.mark.postgres)],
    indirect=True,
)
@pytest.mark.parametrize("call", ["enqueue", "discard"])
async def test_the_embedded_queue_enqueues_and_discards_in_the_callers_transaction(
    queue: Queue, call: str
) -> None:
    """Accept writes its jobs, and a cancellation removes them, in the transaction of the
    email's rows: a rollback leaves the jobs as they were, a commit changes them.
    (Mutation testing: an enqueue or a discard in a write of its own passed every
    contract test, none of which gave them a transaction.)"""
    assert isinstance(queue, EmbeddedQueue)
    given = job()
    if call == "discard":
        await queue.enqueue([given])
    change: Callable[[AsyncConnection], Awaitable[object]] = {
        "enqueue": lambda conn: queue.enqueue([given], conn),
        "discard": lambda conn: queue.discard(given.email_id, [given.destination], conn),
    }[call]
    before = {"enqueue": {}, "discard": {"dest.test": 1}}[call]
    after = {"enqueue": {"dest.test": 1}, "discard": {}}[call]
    with pytest.raises(_RolledBack):
        async with queue.db.write() as conn:
            await change(conn)
            raise _RolledBack
    assert await queue.depth() == before
    async with queue.db.write() as conn:
        await change(conn)
    assert await queue.depth() == after


@pytest.mark.parametrize(
    "adapter",
    ["embedded-sqlite", pytest.param("embedded-postgresql", marks=pytest.mark.postgres)],
    indirect=True,
)
async def test_the_embedded_queue_forgets_heartbeats_that_ran_out(queue: Queue) -> None:
    """Recovery deletes the heartbeat rows that ran out, also of a worker that held no
    job, so the table holds the live workers only. (Redis lets them expire.)"""
    assert isinstance(queue, EmbeddedQueue)
    await queue.beat("alive", 60)
    await queue.beat("gone", 0.05)

    async def forgotten() -> bool:
        assert await queue.recover_expired() == 0  # no job was leased
        async with queue.db.read() as conn:
            owners = set((await conn.execute(select(worker_heartbeats.c.owner))).scalars())
        return owners == {"alive"}

    await poll(forgotten, timeout=5, what="the heartbeat that ran out to be deleted")


@pytest.mark.parametrize("call", sorted(STALE_CALLS))
async def test_a_job_nobody_leased_cannot_be_finished(queue: Queue, call: str) -> None:
    """A job as enqueued (no owner) is nobody's to ack, retry, release, extend, confirm or
    park."""
    unleased = job()
    await queue.enqueue([unleased])
    assert unleased.lease_owner is None
    assert not await STALE_CALLS[call](queue, unleased)
    assert await queue.depth() == {"dest.test": 1}
    leased = await poll_lease(queue, "w1")
    assert (leased.id, leased.attempt) == (unleased.id, 0)


async def test_ack_all_counts_the_jobs_of_every_owner(queue: Queue, elsewhere: Queue) -> None:
    """Jobs of two owners in one call (one statement per owner): both removed, both counted."""
    await queue.enqueue([job(), job()])
    (first,) = await queue.lease("w1", 1, 60)
    (second,) = await elsewhere.lease("w2", 1, 60)
    assert await queue.ack_all([first, second]) == 2
    assert await queue.depth() == {}


@pytest.mark.parametrize("finish", ["retry", "park", "release"])
async def test_a_finished_lease_is_nobodys(queue: Queue, finish: str) -> None:
    """After a retry, park or release the job has no owner until leased again: the
    worker that gave it back can no longer ack or extend it."""
    await queue.enqueue([job()])
    (leased,) = await queue.lease("w1", 10, 60)
    later = utcnow() + timedelta(hours=1)
    given_back: Callable[[], Awaitable[bool]] = {
        "retry": lambda: queue.retry(leased, later, leased.recipient_ids),
        "park": lambda: queue.park(leased, later),
        "release": lambda: queue.release(leased),
    }[finish]
    assert await given_back()
    assert not await queue.extend(leased, 60)
    assert not await queue.confirm(leased, 60)
    assert not await queue.ack(leased)
    assert await queue.depth() == {"dest.test": 1}


async def test_a_watching_worker_hears_of_jobs_queued_elsewhere(
    adapter: str, queue: Queue, elsewhere: Queue
) -> None:
    """Redis and PostgreSQL announce each enqueue that adds jobs to the workers that
    watch (``Queue.watch_work``); SQLite has no one to tell: ``postline serve`` wakes its
    own children. (That an enqueue adding nothing announces nothing: each adapter's own
    tests, as a watcher gathers what comes at once into one wake-up.)"""
    heard: list[None] = []
    told = asyncio.Event()

    def work_arrived() -> None:
        heard.append(None)
        told.set()

    stop = asyncio.Event()
    watching = asyncio.create_task(queue.watch_work(work_arrived, stop))
    try:
        if adapter == "embedded-sqlite":
            await elsewhere.enqueue([job()])
            stop.set()
            await asyncio.wait_for(watching, timeout=10)
            assert heard == []
            return
        await asyncio.wait_for(told.wait(), timeout=10)  # listening: a look at once
        told.clear()
        await elsewhere.enqueue([job()])
        await asyncio.wait_for(told.wait(), timeout=10)
        assert len(heard) == 2
    finally:
        stop.set()
        await asyncio.wait_for(watching, timeout=10)
