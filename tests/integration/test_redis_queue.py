"""What only the Redis queue has to get right: sharing one Redis, failing closed,
several processes at once, and the key layout other tools read."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from postline.queue import QueueError
from postline.queue.redis import RedisQueue
from postline.store.types import utcnow
from tests.integration.test_queue_contract import job

pytestmark = pytest.mark.redis

Make = Callable[..., RedisQueue]


@pytest_asyncio.fixture
async def make(redis_url: str, redis_prefix: str) -> AsyncIterator[Make]:
    """Build queues on the test Redis, each with its own client (as separate processes
    would have), under ``redis_prefix`` or a prefix below it; all closed afterwards."""
    async with AsyncExitStack() as stack:

        def build(suffix: str = "", url: str = redis_url) -> RedisQueue:
            queue = RedisQueue(url, prefix=redis_prefix + suffix)
            stack.push_async_callback(queue.close)
            return queue

        yield build


@pytest_asyncio.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_two_prefixes_do_not_see_each_other(make: Make) -> None:
    first, second = make(":first"), make(":second")
    mine = job("a.test", body="em_first")
    await first.enqueue([mine])
    # The same pair in the other installation is another job, not a duplicate.
    await second.enqueue([job("a.test", email_id=mine.email_id, body="em_second")])
    assert await first.depth() == await second.depth() == {"a.test": 1}
    assert await first.body_refs() == {"em_first"}
    assert await second.body_refs() == {"em_second"}
    (leased,) = await first.lease("w1", 10, 0.01)
    assert leased.id == mine.id
    assert await first.in_flight() == {"a.test": 1}
    assert await second.in_flight() == {}
    await asyncio.sleep(0.05)
    assert await second.recover_expired() == 0
    (other,) = await second.lease("w2", 10, 60)
    assert other.body_ref == "em_second"
    assert await first.recover_expired() == 1


async def test_body_refs_fails_closed_when_redis_is_unreachable(make: Make) -> None:
    queue = make(url=f"redis://127.0.0.1:{closed_port()}/0")
    with pytest.raises(QueueError, match=r"^cannot list queued bodies: "):
        await queue.body_refs()


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def fake_redis(handler: Handler) -> AsyncIterator[str]:
    """A server on a loopback port that plays a broken Redis (``handler`` per connection);
    yields its URL."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0"
    finally:
        server.close()


async def test_body_refs_fails_closed_when_redis_does_not_answer(redis_prefix: str) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers
        writer.close()

    async with fake_redis(silent) as url:
        client = aioredis.Redis.from_url(url, decode_responses=True, socket_timeout=0.3, retry=None)
        queue = RedisQueue.from_client(client, prefix=redis_prefix)
        try:
            with pytest.raises(QueueError):
                await queue.body_refs()
        finally:
            await queue.close()


async def test_a_broken_connection_is_tried_again_once(make: Make) -> None:
    """One quick retry, not redis-py's default of three with waits of seconds (which would
    hold an accept for seconds while Redis is away): redis-py applies it to the connect
    (and its handshake) and to the command, so a server that hangs up at once is
    connected to 2 x 2 times for one call, and the caller gets the error."""
    accepted = 0

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        writer.close()

    async with fake_redis(hang_up) as url:
        with pytest.raises(QueueError, match=r"^cannot list queued bodies: "):
            await make(url=url).body_refs()
    assert accepted == 4


async def test_a_call_that_times_out_is_not_tried_again(make: Make) -> None:
    """A Redis that stops answering fails the call after the socket timeout, once: a
    timed-out script may well have run, so it is not sent again (only a broken connection
    is). URL options take precedence over the client's own; without one the timeout is
    10 s, read here from the pool's settings (a test that waited it out would take 10 s),
    never none, which would hold every caller for as long as Redis stays silent."""
    accepted = 0

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        await reader.read()  # never answers
        writer.close()

    async with fake_redis(silent) as url:
        with pytest.raises(QueueError, match=r"^cannot list queued bodies: "):
            await make(url=f"{url}?socket_timeout=0.3").body_refs()
    assert accepted == 1
    assert make().client.connection_pool.connection_kwargs["socket_timeout"] == 10


async def test_body_refs_fails_closed_on_a_corrupted_key(
    make: Make, raw: aioredis.Redis, redis_prefix: str
) -> None:
    queue = make()
    await queue.enqueue([job()])
    await raw.delete(f"{redis_prefix}:bodies")
    await raw.set(f"{redis_prefix}:bodies", "not a hash")
    with pytest.raises(QueueError, match=r"^cannot list queued bodies: WRONGTYPE"):
        await queue.body_refs()


async def test_body_refs_fails_closed_on_an_empty_reference(
    make: Make, raw: aioredis.Redis, redis_prefix: str
) -> None:
    """An empty body reference names no body: orphan cleanup must not go on from it."""
    queue = make()
    await queue.enqueue([job()])
    await raw.hset(f"{redis_prefix}:bodies", "job_garbled", "")
    with pytest.raises(QueueError, match=r"^unexpected body reference in the queue: ''$"):
        await queue.body_refs()


async def test_a_queue_needs_decoded_replies_and_a_key_prefix(
    redis_url: str, redis_prefix: str
) -> None:
    """Refused when built, with the reason, rather than failing at the first call."""
    replying_bytes = aioredis.Redis.from_url(redis_url)
    decoded = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        with pytest.raises(
            ValueError, match=r"^RedisQueue needs a client made with decode_responses=True$"
        ):
            RedisQueue.from_client(replying_bytes, prefix=redis_prefix)
        with pytest.raises(ValueError, match=r"^the Redis key prefix must not be empty$"):
            RedisQueue.from_client(decoded, prefix="")
    finally:
        await replying_bytes.aclose()
        await decoded.aclose()


async def test_a_prefix_with_glob_characters_lists_its_own_workers_only(make: Make) -> None:
    """``workers`` scans for ``{prefix}:worker:*``: the prefix's own ``[``, ``]``, ``*``
    and ``?`` are matched as themselves (as a pattern ``a[b]c`` matches ``abc``'s
    workers, not its own)."""
    globbed, plain = make(":a[b]c"), make(":abc")
    await globbed.beat("mine", 60)
    await plain.beat("theirs", 60)
    assert await globbed.workers() == {"mine"}
    assert await plain.workers() == {"theirs"}


async def test_a_heartbeat_lives_its_ttl_to_the_millisecond(
    make: Make, raw: aioredis.Redis, redis_prefix: str
) -> None:
    queue = make()
    await queue.beat("w1", 10)
    assert 9_000 < await raw.pttl(f"{redis_prefix}:worker:w1") <= 10_000


async def test_separate_clients_leasing_at_once_never_share_a_job(make: Make) -> None:
    jobs = [job(f"d{i % 7}.test") for i in range(300)]
    await make().enqueue(jobs)
    workers = [make() for _ in range(6)]

    async def drain(index: int, queue: RedisQueue) -> list[str]:
        taken: list[str] = []
        while batch := await queue.lease(f"w{index}", 1 + index % 5, 60):
            taken += [j.id for j in batch]
            assert all(j.lease_owner == f"w{index}" for j in batch)
            await asyncio.sleep(0)
        return taken

    results = await asyncio.gather(*(drain(i, q) for i, q in enumerate(workers)))
    leased = [job_id for taken in results for job_id in taken]
    assert len(leased) == len(set(leased)) == 300
    assert sum((await workers[0].in_flight()).values()) == 300


async def test_key_layout_and_exact_times(
    make: Make, raw: aioredis.Redis, redis_prefix: str
) -> None:
    """Operators and the scale-out suite read ``{prefix}:jobs`` directly; times are
    written back by Lua, which must not round them (cjson keeps 14 digits)."""
    queue = make()
    due = datetime(2024, 5, 17, 8, 30, 15, 123456, tzinfo=UTC)
    original = dataclasses.replace(job(), due_at=due)
    await queue.enqueue([original])
    (leased,) = await queue.lease("w1", 10, 60)
    assert leased.due_at == due
    stored = json.loads(await raw.hget(f"{redis_prefix}:jobs", original.id) or "{}")
    assert stored["lease_owner"] == "w1"
    assert stored["email_id"] == original.email_id
    assert stored["recipient_ids"] == original.recipient_ids
    assert await raw.zscore(f"{redis_prefix}:leased", original.id) is not None
    assert await raw.hget(f"{redis_prefix}:bodies", original.id) == original.body_ref
    assert await raw.hget(f"{redis_prefix}:depth", "dest.test") == "1"
    assert await raw.hget(f"{redis_prefix}:inflight", "dest.test") == "1"
    assert await raw.zscore(f"{redis_prefix}:domains", "dest.test") is None  # none pending
    retry_at = datetime(2024, 5, 17, 8, 31, 0, 654321, tzinfo=UTC)
    await queue.retry(leased, retry_at, [])
    stored = json.loads(await raw.hget(f"{redis_prefix}:jobs", original.id) or "{}")
    assert stored["recipient_ids"] == [] and stored["lease_owner"] is None
    assert datetime.fromtimestamp(stored["due_at"], UTC) == retry_at
    assert await raw.zscore(f"{redis_prefix}:due:dest.test", original.id) is not None
    assert await raw.zscore(f"{redis_prefix}:domains", "dest.test") is not None
    assert await raw.hget(f"{redis_prefix}:inflight", "dest.test") is None
    assert await raw.hget(f"{redis_prefix}:pairs", f"{original.email_id}|dest.test") == (
        original.id
    )


async def test_counters_stay_exact_under_stale_calls(make: Make) -> None:
    queue = make()
    await queue.enqueue([job(), job()])
    first, second = await queue.lease("w1", 10, 60)
    assert await queue.ack(first)
    assert not await queue.ack(first)  # twice
    assert not await queue.release(first)  # after it is gone
    assert not await queue.retry(first, utcnow(), [])
    assert not await queue.park(first, utcnow())
    assert not await queue.extend(first, 60)
    assert await queue.depth() == {"dest.test": 1}
    assert await queue.in_flight() == {"dest.test": 1}
    assert await queue.release(second)
    assert not await queue.release(second)  # no longer its owner's
    assert await queue.in_flight() == {}
    (again,) = await queue.lease("w2", 10, 60)
    assert await queue.ack(again)
    assert await queue.depth() == {} and await queue.in_flight() == {}
    assert await queue.body_refs() == set()
    assert await queue.lease("w2", 10, 60) == []
    assert await queue.extend(again, 60) is False


async def test_an_enqueue_that_adds_jobs_is_announced_under_its_own_prefix_only(
    make: Make, raw: aioredis.Redis, redis_prefix: str
) -> None:
    api, other_install = make(), make(":other")
    channel = f"{redis_prefix}:work"
    async with raw.pubsub() as pubsub:
        await pubsub.subscribe(channel)
        confirmed = await pubsub.get_message(timeout=10)
        assert confirmed is not None and confirmed["type"] == "subscribe", confirmed
        queued = job("a.test")
        await other_install.enqueue([job("a.test")])  # another installation's channel
        await api.enqueue([])
        await api.enqueue([queued])
        await api.enqueue([queued])  # queued already: nothing added
        await api.enqueue([job("b.test")])
        await raw.publish(channel, "end")  # after all of them, in Redis's order
        messages: list[str] = []
        while not messages or messages[-1] != "end":
            message = await pubsub.get_message(timeout=10)
            assert message is not None, f"no message after {messages}"
            messages.append(message["data"])
    assert messages == ["jobs", "jobs", "end"]


async def test_watching_an_unreachable_redis_backs_off_until_stopped(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    queue = make(url=f"redis://127.0.0.1:{closed_port()}/0")
    stop = asyncio.Event()
    watching = asyncio.create_task(queue.watch_work(lambda: None, stop))
    deadline = asyncio.get_running_loop().time() + 10
    while "watching the Redis queue for new jobs failed" not in caplog.text:
        assert not watching.done(), "the watch gave up instead of backing off"
        assert asyncio.get_running_loop().time() < deadline, caplog.text
        await asyncio.sleep(0.02)
    stop.set()
    await asyncio.wait_for(watching, timeout=10)  # ended, not raised
