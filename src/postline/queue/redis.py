"""The Redis queue: for installations spread over several hosts.

Jobs live outside the store, so they cannot share a transaction with the rows
they belong to: accept commits the email and then enqueues, the recorder
commits an outcome and then acks. The database stays the record of what was
promised, and housekeeping rebuilds missing jobs from it
(``postline.recovery``); enqueue keeping one job per (email, destination) is
what makes that rebuild safe to repeat.

Key layout, all under ``{prefix}:`` so that several installations can share
one Redis:

``jobs``       hash   job id -> JSON (email_id, destination, recipient_ids,
                      body_ref, attempt, due_at, lease_owner, lease_until,
                      created_at; times in epoch seconds)
``bodies``     hash   job id -> body_ref (``body_refs`` is one HVALS)
``pairs``      hash   "email_id|destination" -> job id
``due:{d}``    zset   pending job ids of destination d, scored by due time
``domains``    zset   destinations with pending jobs, scored by their next turn
``leased``     zset   leased job ids, scored by lease expiry
``depth``      hash   destination -> pending + leased jobs
``inflight``   hash   destination -> leased jobs
``rate:{b}``   hash   token bucket b of the rate limits: tokens, ts (expires when full)
``parked:{d}`` zset   job ids of destination d parked behind its breaker, scored by the
                      time they wait for (``park``, ``release_parked``)
``worker:{o}`` string heartbeat of worker o, with a TTL: o is alive while it exists
``work``       channel a message after every enqueue that adds jobs, so that idle
                      workers look 0.1 s later, not at their next poll (``watch_work``)

Every change is one Lua script (``redis_lua``), so the keys always agree
with each other; Redis must not evict keys on its own either
(``maxmemory-policy noeviction``). "Now" is the Redis server's clock, so
that every process agrees on lease expiry and on whose turn it is; due
times come from the callers' clocks, as in the embedded queue, so hosts
still keep their clocks in sync (NTP).

``in_flight`` counts leases until they are recovered, expired or not (the
embedded queue stops counting a lease when it expires).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncConnection

from postline.backoff import Backoff
from postline.queue import redis_lua
from postline.queue.base import (
    WATCH_CHECK_SECONDS,
    Job,
    Queue,
    QueueError,
    Tokens,
    check_bucket,
    relay_announcements,
    wait_for_token,
)

log = logging.getLogger("postline.queue")

#: Jobs per enqueue script, and expired leases made pending per script: a script
#: holds up every other client of Redis while it runs, so big batches go in pieces.
_BATCH = 500


def _client(url: str) -> Redis:
    """A client that fails fast and lets the caller's backoff do the waiting.

    One quick retry on a broken connection covers a pooled connection that went
    stale when Redis restarted; redis-py's default (ten retries, backing off)
    would hold an accept for seconds while Redis is down. Timeouts are not
    retried, as the script may well have run; a connection lost while reading a
    reply can still run one twice, which every script tolerates (a lease run
    twice leaves the jobs of its first run leased but unworked until they expire).
    Options in the URL (``?socket_timeout=...``) take precedence over these.
    """
    return Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=5,
        socket_timeout=10,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 1, (RedisConnectionError,)),
    )


def _epoch(moment: datetime) -> float:
    return moment.timestamp()


def _moment(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


def _job(job_id: str, raw: str) -> Job:
    data = json.loads(raw)
    return Job(
        id=job_id,
        email_id=data["email_id"],
        destination=data["destination"],
        recipient_ids=list(data["recipient_ids"]),
        body_ref=data["body_ref"],
        attempt=int(data["attempt"]),
        due_at=datetime.fromtimestamp(data["due_at"], UTC),
        lease_owner=data["lease_owner"],
        lease_until=_moment(data["lease_until"]),
        created_at=_moment(data["created_at"]),
    )


def _encode(job: Job) -> str:
    return json.dumps(
        {
            "email_id": job.email_id,
            "destination": job.destination,
            "recipient_ids": list(job.recipient_ids),
            "body_ref": job.body_ref,
            "attempt": job.attempt,
            "due_at": _epoch(job.due_at),
            "lease_owner": None,
            "lease_until": None,
            "created_at": None,  # the script's clock
        }
    )


class RedisQueue(Queue):
    shares_store = False

    def __init__(self, url: str, prefix: str = "postline") -> None:
        self._setup(_client(url), prefix)

    @classmethod
    def from_client(cls, client: Redis, prefix: str = "postline") -> RedisQueue:
        """A queue over a client made elsewhere (``decode_responses=True``); it closes it."""
        if not client.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError("RedisQueue needs a client made with decode_responses=True")
        queue = cls.__new__(cls)
        queue._setup(client, prefix)
        return queue

    def _setup(self, client: Redis, prefix: str) -> None:
        if not prefix:
            raise ValueError("the Redis key prefix must not be empty")
        self.client = client
        self.prefix = prefix
        self._keys = [
            f"{prefix}:{name}"
            for name in ("jobs", "bodies", "pairs", "domains", "leased", "depth", "inflight")
        ]
        self._due = f"{prefix}:due:"
        self._work = f"{prefix}:work"
        self._worker = f"{prefix}:worker:"
        self._enqueue = client.register_script(redis_lua.ENQUEUE)
        self._lease = client.register_script(redis_lua.LEASE)
        self._extend = client.register_script(redis_lua.EXTEND)
        self._ack = client.register_script(redis_lua.ACK)
        self._retry = client.register_script(redis_lua.RETRY)
        self._release = client.register_script(redis_lua.RELEASE)
        self._recover_abandoned = client.register_script(redis_lua.RECOVER_ABANDONED)
        self._discard = client.register_script(redis_lua.DISCARD)
        self._take_token = client.register_script(redis_lua.BUCKET_TAKE)

    async def _run(self, script: AsyncScript, *args: Any) -> Any:
        return await script(keys=self._keys, args=[self._due, *args])

    async def enqueue(
        self, jobs: Sequence[Job], conn: AsyncConnection | None = None, *, fresh: bool = False
    ) -> None:
        added = 0
        for start in range(0, len(jobs), _BATCH):
            args: list[str | float] = []
            for job in jobs[start : start + _BATCH]:
                args += [
                    job.id,
                    f"{job.email_id}|{job.destination}",
                    job.destination,
                    job.body_ref,
                    _epoch(job.due_at),
                    _encode(job),
                ]
            added += int(await self._run(self._enqueue, *args))
        if added:
            await self._announce()

    async def _announce(self) -> None:
        """Tell the workers watching (``watch_work``) that jobs were queued.

        Only a wake-up: a worker that misses it finds the jobs at its next poll, and
        the jobs are queued already, so a failure here is not the caller's error.
        """
        try:
            await self.client.publish(self._work, "jobs")
        except (RedisError, OSError) as exc:
            log.debug("could not announce new jobs on %s: %s", self._work, exc)

    async def watch_work(self, work_arrived: Callable[[], None], stop: asyncio.Event) -> None:
        """Subscribe to the ``work`` channel: every message is jobs queued somewhere.

        Without it a worker on another host than the API found new mail at its next
        poll only (``POSTLINE_POLL_INTERVAL``, 0.5 s): ``bench/peers.py``'s distributed
        run at 200 single sends a second took 278-531 ms from accept to delivery at the
        95th percentile, 57-125 ms with it. A lost subscription is taken again with
        backoff; meanwhile the polls find the jobs, as before.
        """
        backoff = Backoff("watching the Redis queue for new jobs")
        while not stop.is_set():
            try:
                async with self.client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self._work)
                    backoff.succeeded()
                    await _relay(pubsub, work_arrived, stop)
            except Exception as exc:  # Redis away, or anything else: the polls go on
                wait = backoff.failed(exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=wait)

    async def lease(
        self,
        owner: str,
        limit: int,
        lease_seconds: float,
        held_back: Collection[str] = frozenset(),
    ) -> list[Job]:
        if limit <= 0:
            return []
        reply = await self._run(self._lease, owner, lease_seconds, limit, _BATCH, *held_back)
        jobs = [_job(reply[i], reply[i + 1]) for i in range(0, len(reply), 2)]
        return sorted(jobs, key=lambda job: job.due_at)

    async def extend(self, job: Job, lease_seconds: float) -> bool:
        if job.lease_owner is None:
            return False
        until = await self._run(self._extend, job.id, job.lease_owner, lease_seconds)
        return until is not None

    async def _owned(self, script: AsyncScript, job: Job, *args: Any) -> bool:
        """Run an owner's script on ``job``: whether it changed it (1) or the lease was
        not ``job``'s owner's (0, nothing changed)."""
        if job.lease_owner is None:
            return False
        return bool(int(await self._run(script, job.id, job.lease_owner, *args)))

    async def ack(self, job: Job, conn: AsyncConnection | None = None) -> bool:
        return await self._owned(self._ack, job)

    async def retry(
        self,
        job: Job,
        due_at: datetime,
        recipient_ids: Sequence[str],
        conn: AsyncConnection | None = None,
    ) -> bool:
        pending = json.dumps(list(recipient_ids))
        return await self._owned(self._retry, job, _epoch(due_at), pending)

    async def release(self, job: Job) -> bool:
        return await self._owned(self._release, job)

    async def discard(
        self, email_id: str, destinations: Sequence[str], conn: AsyncConnection | None = None
    ) -> int:
        """One script for all the destinations; ``conn`` is not Redis's (jobs live apart)."""
        if not destinations:
            return 0
        return int(await self._run(self._discard, email_id, *sorted(set(destinations))))

    async def recover_expired(self) -> int:
        """One script: expired leases, then those of owners whose heartbeat key is gone."""
        return int(await self._run(self._recover_abandoned, self._worker))

    async def beat(self, owner: str, ttl_seconds: float) -> None:
        """A key per worker that Redis expires on its own clock when the beats stop."""
        await self.client.set(self._worker + owner, "1", px=max(1, round(ttl_seconds * 1000)))

    async def workers(self) -> set[str]:
        pattern = re.sub(r"([*?\[\]\\])", r"\\\1", self._worker) + "*"
        keys = [key async for key in self.client.scan_iter(match=pattern, count=500)]
        return {key.removeprefix(self._worker) for key in keys}

    async def retire(self, owner: str) -> None:
        await self.client.delete(self._worker + owner)

    async def body_refs(self) -> set[str]:
        """Fail closed: orphan cleanup deletes spooled bodies not named here, so a partial
        or garbled answer would delete mail; any doubt is a QueueError."""
        try:
            refs = await self.client.hvals(self._keys[1])
        except (RedisError, OSError) as exc:
            raise QueueError(f"cannot list queued bodies: {exc}") from exc
        if not isinstance(refs, list):
            raise QueueError(f"unexpected reply listing queued bodies: {type(refs).__name__}")
        bodies: set[str] = set()
        for ref in refs:
            if not isinstance(ref, str) or not ref:
                raise QueueError(f"unexpected body reference in the queue: {ref!r}")
            bodies.add(ref)
        return bodies

    async def _counts(self, key: str) -> dict[str, int]:
        counts = await self.client.hgetall(key)
        return {str(destination): int(n) for destination, n in counts.items() if int(n) > 0}

    async def depth(self) -> dict[str, int]:
        return await self._counts(self._keys[5])

    async def in_flight(self) -> dict[str, int]:
        return await self._counts(self._keys[6])

    async def take_token(self, bucket: str, rate: float, burst: int, count: int = 1) -> Tokens:
        """One script over one key, on the Redis server's clock (``redis_lua.BUCKET_TAKE``)."""
        check_bucket(rate, burst, count)
        key = f"{self.prefix}:rate:{bucket}"
        args: list[str | int] = [repr(float(rate)), burst, count]
        taken, tokens = await self._take_token(keys=[key], args=args)
        left = float(tokens)
        if int(taken):
            return Tokens(allowed=True, remaining=left, wait=0.0)
        return Tokens(allowed=False, remaining=left, wait=wait_for_token(left, rate, count))

    async def close(self) -> None:
        await self.client.aclose()

    @functools.cached_property
    def _park(self) -> AsyncScript:
        return self.client.register_script(redis_lua.PARK)

    @functools.cached_property
    def _release_parked(self) -> AsyncScript:
        return self.client.register_script(redis_lua.RELEASE_PARKED)

    async def park(self, job: Job, until: datetime, conn: AsyncConnection | None = None) -> bool:
        """Noted in ``parked:{d}`` (a zset of job ids scored by ``until``) for
        :meth:`release_parked`, which releases only a job still due at that very time."""
        return await self._owned(self._park, job, _epoch(until), self._parked)

    async def release_parked(self, destination: str) -> int:
        return int(await self._run(self._release_parked, destination, self._parked))

    @property
    def _parked(self) -> str:
        return f"{self.prefix}:parked:"


async def _relay(pubsub: PubSub, work_arrived: Callable[[], None], stop: asyncio.Event) -> None:
    """Wake the worker for the messages of ``pubsub`` until ``stop``, or until its
    connection fails: then with that error."""
    told = asyncio.Event()
    reading = asyncio.create_task(_read_announcements(pubsub, told))
    try:
        await relay_announcements(told, work_arrived, stop, lambda: not reading.done())
    finally:
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading  # its error, if any, is the connection's


async def _read_announcements(pubsub: PubSub, told: asyncio.Event) -> None:
    """Set ``told`` for each message on the subscribed channel, until the connection fails.

    A read with a timeout, not one that blocks: each read checks the connection's health
    first (a PING once it has been idle ``health_check_interval``), so a connection that
    died without closing is found and the subscription is taken again.
    """
    while True:
        if await pubsub.get_message(timeout=WATCH_CHECK_SECONDS) is not None:
            told.set()
