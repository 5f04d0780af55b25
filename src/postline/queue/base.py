"""The queue contract every adapter implements (embedded table, Redis).

A job is leased, never popped: a worker that dies leaves a lease that
expires, and the job is leased again. Leases are short and workers extend
them while they work.

Every call that changes a leased job (``extend``, ``ack``, ``retry``,
``release``, ``park``) acts only for the job's current owner, the
``lease_owner`` of the ``Job`` the caller leased. A worker whose lease lapsed
and went to another worker changes nothing, and is told so: these calls
return False (``ack_all``: how many it removed), so that the late worker can
say in its log that its work was taken over instead of believing it finished.

Each worker also announces itself with a heartbeat, so that the jobs of one
that was killed are free again as soon as its heartbeat stops, not when their
leases end (``recover_expired``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from postline.store.records import Record

#: How long a watcher gathers announcements of new jobs before it wakes its worker
#: (``Queue.watch_work``): woken for each one, the workers of ``bench/peers.py``'s
#: distributed run at 200 single sends a second leased, sent and recorded each email
#: alone, and the accept's p50 went from 8-23 ms to 37-43 ms (more commits waiting on
#: PostgreSQL's WAL flush, and more CPU), against 13-35 ms with 0.1 s.
GATHER_SECONDS = 0.1
#: How often a watcher looks whether it should stop, or its listening connection closed.
WATCH_CHECK_SECONDS = 1.0


async def relay_announcements(
    told: asyncio.Event,
    work_arrived: Callable[[], None],
    stop: asyncio.Event,
    listening: Callable[[], bool],
) -> None:
    """Wake the worker (``work_arrived``) once for each moment in which ``told`` was set,
    until ``stop`` is set or ``listening`` says the connection that sets it is gone.

    Once at the start too: jobs may have been queued while nobody listened.
    """
    work_arrived()
    while not stop.is_set() and listening():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(told.wait(), timeout=WATCH_CHECK_SECONDS)
        if told.is_set():
            await asyncio.sleep(GATHER_SECONDS)  # the enqueues of that moment, one lease
            told.clear()
            work_arrived()


class QueueError(Exception):
    """The queue could not answer (completely): callers must not guess."""


@dataclass(frozen=True)
class Tokens:
    """What taking one token from a rate bucket found (``Queue.take_token``)."""

    #: Whether a token was taken: the request may go ahead.
    allowed: bool
    #: Tokens left in the bucket after this take (a fraction while it refills).
    remaining: float
    #: Seconds until a token is available: 0 when allowed, more than 0 when not.
    wait: float


#: The least wait a refusal reports: time moved on between the take and the look.
_LEAST_WAIT = 0.001


def check_bucket(rate: float, burst: int, count: int = 1) -> None:
    """A bucket that could never hold the tokens asked for is a caller's mistake, not a
    refusal: the caller refuses such a request itself (``ratelimit.RateLimiter.check``)."""
    if not (math.isfinite(rate) and rate > 0) or burst < 1:
        raise ValueError(f"a rate bucket needs rate > 0 and burst >= 1, not {rate}, {burst}")
    if not 1 <= count <= burst:
        raise ValueError(f"a take needs 1 to burst ({burst}) tokens, not {count}")


def wait_for_token(tokens: float, rate: float, count: int = 1) -> float:
    """Seconds until a bucket holding ``tokens`` (< ``count``) has ``count``, at ``rate``
    per second."""
    return max((count - tokens) / rate, _LEAST_WAIT)


@dataclass(frozen=True, slots=True)
class Job(Record):
    """One delivery job: an email's recipients at one destination, as leased.

    Frozen: what a worker holds is the job as it was leased. Its lease lives in
    the queue (``extend`` renews it there), not in this copy.
    """

    id: str
    email_id: str
    destination: str
    recipient_ids: list[str]
    body_ref: str
    due_at: datetime
    attempt: int = 0
    lease_owner: str | None = None
    lease_until: datetime | None = None
    created_at: datetime | None = field(default=None)


#: The share of a lease that must be left for :meth:`Queue.confirm` to answer
#: without renewing it: the final reply and the recording then have at least
#: that much time (20 s of the default 30), as long as the heartbeat runs.
CONFIRM_SHARE = 2 / 3


class Queue(ABC):
    #: Whether the queue lives in the same database as the store, so that jobs
    #: can be written in the same transaction as the rows they belong to.
    shares_store: bool = False

    @abstractmethod
    async def enqueue(
        self, jobs: Sequence[Job], conn: AsyncConnection | None = None, *, fresh: bool = False
    ) -> None:
        """Add jobs, at most one per (email_id, destination).

        A job whose pair already has a job (queued earlier, or earlier in
        ``jobs``) is skipped and the existing one kept, whatever its state. The
        sweep that rebuilds jobs from the database after a queue loss
        (``postline.recovery``) relies on this to run again and again safely.
        ``conn``: the store transaction to write in, for queues that share it.
        ``fresh``: the jobs' emails were accepted in that transaction, one job per
        destination each, so none has a job yet and a queue need not look.
        """

    @abstractmethod
    async def lease(
        self,
        owner: str,
        limit: int,
        lease_seconds: float,
        held_back: Collection[str] = frozenset(),
    ) -> list[Job]:
        """Claim up to ``limit`` due jobs atomically for ``owner``, sorted by due time.

        Fair across destinations: one due job per destination in turn, the one
        served least recently first, round after round, so that a destination
        with a huge backlog cannot starve the others, even at ``limit=1``. An
        expired lease counts as due.

        ``held_back``: destinations whose breaker is open for the caller. Their
        jobs are leased only to be parked, so once another destination has jobs
        in this lease they get their own turns only, never the slots the others
        leave: a backlog behind an open breaker, parked job by job, must not hold
        the rest of the mail's slots. Alone, they get every slot, as any destination.
        """

    async def lease_in(
        self,
        conn: AsyncConnection,
        owner: str,
        limit: int,
        lease_seconds: float,
        held_back: Collection[str] = frozenset(),
    ) -> list[Job]:
        """:meth:`lease` inside the caller's store transaction; only a queue that
        ``shares_store`` can (the recorder takes the engine's next jobs in the
        transaction that finishes its last ones: one turn at SQLite's writer, not two)."""
        raise NotImplementedError(f"{type(self).__name__} does not share the store")

    @abstractmethod
    async def extend(self, job: Job, lease_seconds: float) -> bool:
        """Push the lease further out; False if it was lost to another worker."""

    async def confirm(self, job: Job, lease_seconds: float) -> bool:
        """Whether ``job``'s owner still holds its lease, for long enough to finish.

        Asked before the final dot of every message (``delivery.lease``). True
        when the lease is the owner's and has at least ``CONFIRM_SHARE`` of
        ``lease_seconds`` left, or has been renewed to a whole ``lease_seconds``
        because less was left; False if it was lost. Here: always renewed (an
        :meth:`extend`). A queue that can look at a lease more cheaply than it
        can renew one overrides this, and only writes when the lease runs low.
        """
        return await self.extend(job, lease_seconds)

    @abstractmethod
    async def ack(self, job: Job, conn: AsyncConnection | None = None) -> bool:
        """The job is finished: remove it. False if the lease is not ``job``'s owner's."""

    async def ack_all(self, jobs: Sequence[Job], conn: AsyncConnection | None = None) -> int:
        """:meth:`ack` each job; how many were removed (those still their owner's).

        Adapters that can do it in one step override this.
        """
        acked = 0
        for job in jobs:
            acked += await self.ack(job, conn)
        return acked

    @abstractmethod
    async def retry(
        self,
        job: Job,
        due_at: datetime,
        recipient_ids: Sequence[str],
        conn: AsyncConnection | None = None,
    ) -> bool:
        """Release the job to run again at ``due_at`` for the recipients still pending.

        False, changing nothing, if the lease is not ``job``'s owner's any more.
        """

    @abstractmethod
    async def release(self, job: Job) -> bool:
        """Give an unfinished job back now (graceful shutdown), attempt unchanged.

        False, changing nothing, if the lease is not ``job``'s owner's any more.
        """

    @abstractmethod
    async def discard(
        self, email_id: str, destinations: Sequence[str], conn: AsyncConnection | None = None
    ) -> int:
        """Remove the jobs of ``email_id`` for these destinations that nobody holds;
        return how many.

        For jobs left with nothing to send (every recipient cancelled): they leave the
        queue, its depth and the bodies it keeps, at once, instead of when they come
        due and a worker leases and acks them. A job under a live lease is left to its
        worker, which finds its recipients final and acks it. ``conn`` as in :meth:`enqueue`.
        """

    @abstractmethod
    async def recover_expired(self) -> int:
        """Free leases whose holder is gone; return how many.

        Gone: the lease expired, or its owner has no live heartbeat (it never
        beat, its heartbeat ran out, or it retired), whatever the lease says.
        Workers run this every heartbeat, so a killed worker's jobs are leased
        again within one heartbeat timeout and one heartbeat interval.
        """

    @abstractmethod
    async def beat(self, owner: str, ttl_seconds: float) -> None:
        """Announce that ``owner`` is alive for ``ttl_seconds`` from now.

        A worker beats before its first lease and then well within the TTL;
        without a live heartbeat its leases are free for others to take.
        """

    @abstractmethod
    async def workers(self) -> set[str]:
        """The owners whose heartbeat is live now."""

    @abstractmethod
    async def retire(self, owner: str) -> None:
        """``owner`` stops: its heartbeat ends now (graceful shutdown, after releasing)."""

    @abstractmethod
    async def body_refs(self) -> set[str]:
        """Every body referenced by a pending or leased job; raise QueueError, never guess."""

    @abstractmethod
    async def depth(self) -> dict[str, int]:
        """Jobs per destination domain (pending and leased)."""

    @abstractmethod
    async def in_flight(self) -> dict[str, int]:
        """Leased jobs per destination domain."""

    @abstractmethod
    async def take_token(self, bucket: str, rate: float, burst: int, count: int = 1) -> Tokens:
        """Take ``count`` tokens (1 to ``burst``) from ``bucket``, atomically for every
        process sharing the queue.

        A token bucket: it holds up to ``burst`` tokens (full when first used) and
        gains ``rate`` per second. A take that finds ``count`` tokens or more removes
        them; one that finds fewer changes nothing and says how long until there are.
        Kept in the queue's backend so that several API processes share one budget;
        the backend's clock, where it has one, so that their clocks need not agree.
        """

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    async def watch_work(self, work_arrived: Callable[[], None], stop: asyncio.Event) -> None:
        """Call ``work_arrived`` each time another process queues jobs, until ``stop`` is set.

        So that a worker looks at once, not at its next poll (``POSTLINE_POLL_INTERVAL``),
        when an API on another host queues mail. This one has nothing to watch, as the
        embedded queue on SQLite: its writers are this process, or ``postline serve``,
        which wakes the delivery process it started itself (``postline.delivery_process``).
        """
        await stop.wait()

    @abstractmethod
    async def park(self, job: Job, until: datetime, conn: AsyncConnection | None = None) -> bool:
        """Give the job back to wait until ``until`` without it counting as an attempt.

        False, changing nothing, if the lease is not ``job``'s owner's any more.

        For a job whose destination refused it before any connection (an open
        circuit breaker): ``attempt`` and the recipients stay as they are, so the
        retry backoff does not advance. The job stays parked, due at ``until``,
        until :meth:`release_parked` makes it due sooner; a lease, retry or park
        after that is an ordinary one. ``conn`` as in :meth:`enqueue`.
        """

    @abstractmethod
    async def release_parked(self, destination: str) -> int:
        """Make the jobs parked for ``destination`` due now; return how many.

        Jobs parked and then leased, retried or acked since are not touched:
        only those still waiting at the time their park gave them. Run by the
        worker that sees the destination recover, for the jobs every worker parked.
        """
