"""The embedded queue: a table in Postline's own database.

Because it shares the store, accept writes jobs in the same transaction as
the email, and the recorder removes a job in the transaction that records its
outcome: no window in which one exists without the other.

Leasing is fair across destinations (see ``Queue.lease``) and costs about
what a plain earliest-due-first lease does, whatever the backlog: the engine
leases whenever a delivery slot frees up, and on SQLite each lease is a write
that holds up every other writer. So a lease does not look at every due job to
find whose turn it is. Each queue object keeps a view of that (``_Turns``: the
destinations with jobs, the earliest due of each, when it last served each),
and a lease claims, through the index on ``(destination, due_at)``, the
earliest jobs of the destinations whose turn comes first; then, if those had
fewer than asked, the earliest due jobs of any destination. That second step
is why the view may be out of date without harm: no due job waits while a slot
is free, and a destination the view does not know yet (enqueued by another
process) is served too. Every claim checks again that each job is due and not
leased, under the single writer on SQLite and with FOR UPDATE SKIP LOCKED on
PostgreSQL: the view decides the order, never whether a job may be leased.

What this object enqueues, leases, retries and releases keeps the view
current. Besides, leases read from the store each destination with jobs and
the earliest due of each, ``_READ_CHUNK`` destinations at a time: a few index
probes per destination, not per job. A lease inside another transaction (the
recorder's refill, which is how a busy engine leases) starts that read beside
it, for the leases after it: a process that leases only that way would otherwise
never learn of destinations another process enqueued, and would serve them only
after the earliest due jobs of every destination it knows. A round of reads over
all of them starts at most once a second, and reads are spaced so that they take about 5% of the
time when there are very many destinations. Within one process fairness is as
exact as the view; several processes sharing a PostgreSQL database are each
fair on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Integer,
    String,
    any_,
    bindparam,
    delete,
    false,
    func,
    insert,
    literal_column,
    select,
    true,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from postline.backoff import Backoff
from postline.queue.base import (
    CONFIRM_SHARE,
    Job,
    Queue,
    QueueError,
    Tokens,
    check_bucket,
    relay_announcements,
)
from postline.queue.buckets import BucketTaker
from postline.store.db import Database
from postline.store.gathering import GroupRead
from postline.store.inserts import insert_in_parts
from postline.store.schema import queue_jobs as jobs_table
from postline.store.schema import worker_heartbeats as heartbeats_table
from postline.store.types import UTCDateTime, utcnow

log = logging.getLogger("postline.queue")

#: The PostgreSQL channel that every enqueue adding jobs notifies at its commit
#: (``watch_work``).
WORK_CHANNEL = "postline_work"

#: Destinations per statement when leasing by turn on SQLite, which allows at
#: most 500 parts in one UNION.
_MOST_TURNS = 200
#: Destinations read from the store per read: a read stays a few milliseconds
#: however many destinations have jobs, and a lease that does one waits no longer.
_READ_CHUNK = 1000
#: Least time between two rounds of reads, each one over every destination;
#: the view is that much out of date at most for what other processes enqueue.
_ROUND_SECONDS = 1.0
#: Time between two reads: at least this many times what the last one took, so
#: that reading stays a small part of the time (about 5%) with very many destinations.
_READ_COST_FACTOR = 20


#: Email ids looked up per query when enqueueing: under every driver's bind parameter limit.
_LOOKUP_CHUNK = 1000


def _not_leased(now: Any) -> Any:
    """Not leased, or the lease expired."""
    return jobs_table.c.lease_until.is_(None) | (jobs_table.c.lease_until < now)


def _available(now: Any) -> Any:
    """Due, and not leased (or the lease expired): what lease may take."""
    return (jobs_table.c.due_at <= now) & _not_leased(now)


def _live_owners(now: Any) -> Any:
    """The owners whose heartbeat runs at ``now``."""
    return select(heartbeats_table.c.owner).where(heartbeats_table.c.alive_until >= now)


def _abandoned(now: Any) -> Any:
    """Leased jobs whose holder is gone: the lease expired, or the owner's heartbeat stopped.

    A condition on the job row itself, so that PostgreSQL checks it again on a row
    that a concurrent lease changed while the update waited for it. ``> ''`` rather
    than ``IS NOT NULL`` (owners are never empty): SQLite then reads the leased jobs
    through the index on lease_owner instead of every job.
    """
    owner = jobs_table.c.lease_owner
    return (owner > "") & (
        (jobs_table.c.lease_until < now) | owner.not_in(_live_owners(now).scalar_subquery())
    )


def _dead_heartbeats(now: Any) -> Any:
    return select(heartbeats_table.c.owner).where(heartbeats_table.c.alive_until < now)


#: The order of the index on (destination, due_at), to read one destination's jobs by.
_BY_DESTINATION = (jobs_table.c.destination, jobs_table.c.due_at)


def _of(destination: Any, sqlite: bool) -> Any:
    """The jobs of ``destination``: read them ``_BY_DESTINATION``, through its index.

    On PostgreSQL ``= ANY(ARRAY[d])``, not ``= d``: after an equality with a
    constant it drops the destination from the order, and may then read the
    jobs of a destination that has many of them through the index on due_at
    alone, past every other destination's jobs (10 ms at 100k jobs, and more
    with more). Only the index on (destination, due_at) gives this order
    without sorting, and its scan still stops at the first job not yet due.
    """
    if sqlite:
        return jobs_table.c.destination == destination
    return jobs_table.c.destination == any_(postgresql.array([destination]))


def _claim(ids: Any, now: Any) -> Any:
    """The UPDATE leasing the jobs ``ids`` selects to ``owner`` until ``until``.

    Each job is checked again. On SQLite nothing else writes in between; on
    PostgreSQL the selecting query has locked the rows (SKIP LOCKED: concurrent
    leases take other jobs instead of waiting).
    """
    return (
        update(jobs_table)
        .where(jobs_table.c.id.in_(ids), _available(now))
        .values(lease_owner=bindparam("owner"), lease_until=bindparam("until"))
        .returning(*jobs_table.c)
    )


# The claims are built once and run with parameters: building one costs more
# than running it (about 0.2 ms per destination in SQLAlchemy, at every lease).


@functools.cache
def _claim_by_turns_sqlite(destinations: int) -> Any:
    """Lease the earliest available jobs of ``destinations`` destinations, on SQLite.

    Parameters: ``d0``, ``k0``, ``d1``, ``k1``...: each destination and how many of
    its jobs to take; ``now``, ``owner``, ``until``. One index range per destination,
    each in a subquery of its own: SQLite allows no LIMIT on a part of a UNION.
    """
    now = bindparam("now", type_=UTCDateTime())
    parts = []
    for i in range(destinations):
        subquery = (
            select(jobs_table.c.id)
            .where(_of(bindparam(f"d{i}", type_=String()), sqlite=True), _available(now))
            .order_by(*_BY_DESTINATION)
            .limit(bindparam(f"k{i}", type_=Integer()))
            .subquery()
        )
        parts.append(select(subquery.c.id))
    return _claim(parts[0] if len(parts) == 1 else union_all(*parts), now)


@functools.cache
def _claim_by_turns_postgresql() -> Any:
    """Lease the earliest available jobs of some destinations, on PostgreSQL.

    Parameters: ``destinations`` and ``quotas``, arrays: each destination and how
    many of its jobs to take; ``limit``, the sum of the quotas; ``now``, ``owner``,
    ``until``. One index range per destination, in a lateral subquery. Not one
    subquery per destination as on SQLite: with a LIMIT parameter in each,
    PostgreSQL plans that statement anew at every lease, which costs more than
    running it (2 ms for 32 destinations). The outer LIMIT, which cuts nothing,
    tells the planner how few rows to expect, so that it updates them one by
    one through the primary key.
    """
    now = bindparam("now", type_=UTCDateTime())
    turns = (
        func.unnest(
            bindparam("destinations", type_=postgresql.ARRAY(String())),
            bindparam("quotas", type_=postgresql.ARRAY(Integer())),
        )
        .table_valued("destination", "quota")
        .render_derived(name="turns")
    )
    earliest = (
        select(jobs_table.c.id)
        .where(_of(turns.c.destination, sqlite=False), _available(now))
        .order_by(*_BY_DESTINATION)
        .limit(turns.c.quota)
        .with_for_update(skip_locked=True)
        .correlate(turns)
        .lateral("earliest")
    )
    ids = (
        select(earliest.c.id)
        .select_from(turns)
        .join(earliest, true())
        .limit(bindparam("limit", type_=Integer()))
    )
    return _claim(ids, now)


@functools.cache
def _claim_earliest(sqlite: bool, holding_back: bool) -> Any:
    """Lease the earliest available jobs of any destination (``holding_back``: but
    those of ``held``).

    Parameters: ``limit``; ``taken``, the jobs this transaction leased already;
    ``held``, if ``holding_back``; ``now``, ``owner``, ``until``.
    """
    now = bindparam("now", type_=UTCDateTime())
    candidates = (
        select(jobs_table.c.id)
        .where(_available(now), jobs_table.c.id.not_in(bindparam("taken", expanding=True)))
        .order_by(jobs_table.c.due_at)
        .limit(bindparam("limit", type_=Integer()))
    )
    if holding_back:
        candidates = candidates.where(
            jobs_table.c.destination.not_in(bindparam("held", expanding=True))
        )
    if not sqlite:
        candidates = candidates.with_for_update(skip_locked=True)
    return _claim(candidates, now)


@functools.cache
def _ack_owned() -> Any:
    """Delete the jobs ``ids`` whose lease is still ``owner``'s.

    One owner per statement, not one statement per job run as executemany:
    the row count of an executemany is not reported by every driver, and
    ``ack_all`` says how many it removed.
    """
    return delete(jobs_table).where(
        jobs_table.c.id.in_(bindparam("ids", expanding=True)),
        jobs_table.c.lease_owner == bindparam("owner"),
    )


@functools.cache
def _leases() -> Any:
    """The lease of each of the jobs ``ids``: id, owner, until (no row: the job is gone)."""
    c = jobs_table.c
    return select(c.id, c.lease_owner, c.lease_until).where(
        c.id.in_(bindparam("ids", expanding=True))
    )


@functools.cache
def _walk(sqlite: bool) -> Any:
    """The next destinations with jobs, and the earliest due of each one's jobs.

    Parameters: ``after``, the destination to start after ("" for the first);
    ``chunk``, how many destinations at most; ``now``. Rows: ``destination`` in
    order, ``due_at`` of its earliest job not leased at ``now`` (NULL if every job
    is leased).

    A walk of the index on (destination, due_at): each step looks up the next
    destination after the one before, so it costs a few probes per destination
    however many jobs each has. (Neither store skips through an index on its own.)
    """
    later = jobs_table.alias("later")

    def following(after: Any) -> Any:
        return (
            select(func.min(later.c.destination))
            .where(later.c.destination > after)
            .scalar_subquery()
        )

    walk = select(
        following(bindparam("after", type_=String())).label("destination"),
        literal_column("1", Integer()).label("n"),
    ).cte("destinations", recursive=True)
    walk = walk.union_all(
        select(following(walk.c.destination), walk.c.n + 1).where(
            walk.c.destination.is_not(None), walk.c.n < bindparam("chunk", type_=Integer())
        )
    )
    earliest = (
        select(jobs_table.c.due_at)
        .where(_of(walk.c.destination, sqlite), _not_leased(bindparam("now", type_=UTCDateTime())))
        .order_by(*_BY_DESTINATION)
        .limit(1)
        .scalar_subquery()
    )
    return (
        select(walk.c.destination, earliest.label("due_at"))
        .where(walk.c.destination.is_not(None))
        .order_by(walk.c.n)
    )


class _Turns:
    """Whose turn it is, as far as this queue object knows (see the module docstring).

    A destination's turn is the later of its earliest due job and when it was
    last served, as in the Redis queue: the one served least recently goes
    first. A heap ordered by turn makes finding the next ones cost a logarithm
    of the number of destinations, not a sort of them on every lease; an entry
    whose destination has changed turn since is dropped when it comes up.
    """

    def __init__(self) -> None:
        #: destination -> earliest due time of its jobs not leased, as far as known: never
        #: later than the truth, so a destination here may turn out to have nothing due.
        self.due: dict[str, datetime] = {}
        #: destination -> when this object last leased one of its jobs.
        self.served: dict[str, datetime] = {}
        #: (turn, destination), at least one current entry for every destination in ``due``
        #: but those handed out by ``pick`` and not yet settled.
        self._heap: list[tuple[datetime, str]] = []
        #: What ``note`` learned while the store was being read, so the read does not undo it.
        self._noted: dict[str, datetime] | None = None
        #: During a round of reads: the destinations known when it began that nothing
        #: has shown to have jobs since. Those left at its end have none: forgotten.
        self._unseen: set[str] | None = None
        #: Until the first read of the store, nothing is noted: a process that only
        #: enqueues (an API process on PostgreSQL) must not collect every destination.
        self.active = False

    def turn(self, destination: str) -> datetime:
        due = self.due[destination]
        served = self.served.get(destination)
        return due if served is None or served < due else served

    def _push(self, destination: str) -> None:
        heapq.heappush(self._heap, (self.turn(destination), destination))
        if len(self._heap) > 2 * len(self.due) + 1024:  # too many entries out of date
            self._rebuild()

    def _rebuild(self) -> None:
        self._heap = [(self.turn(destination), destination) for destination in self.due]
        heapq.heapify(self._heap)

    def note(self, destination: str, due: datetime) -> None:
        """``destination`` has a job that is not leased, due at ``due``."""
        if not self.active:
            return
        if self._noted is not None:
            self._noted[destination] = min(due, self._noted.get(destination, due))
        if self._unseen is not None:
            self._unseen.discard(destination)
        known = self.due.get(destination)
        if known is not None and known <= due:
            return
        before = None if known is None else self.turn(destination)
        self.due[destination] = due
        if self.turn(destination) != before:
            self._push(destination)

    def reading(self) -> None:
        """A read of the store starts: remember what is noted from now on."""
        self._noted = {}
        if self._unseen is None:
            self._unseen = {*self.due, *self.served}

    def read(self, rows: Iterable[tuple[str, datetime | None]], last: bool) -> None:
        """Take what the store said: destinations with jobs and the earliest due of
        each not leased (None: all leased). ``last``: the round of reads is over.
        """
        noted = self._noted or {}
        self._noted = None
        unseen = self._unseen if self._unseen is not None else set()
        for destination, due in rows:
            unseen.discard(destination)
            if destination in noted:
                due = noted[destination] if due is None else min(due, noted[destination])
            if due is None:
                self.due.pop(destination, None)
                continue
            before = self.turn(destination) if destination in self.due else None
            self.due[destination] = due
            if self.turn(destination) != before:
                self._push(destination)
        if last:
            for destination in unseen:
                self.due.pop(destination, None)
                self.served.pop(destination, None)
            self._unseen = None
        self.active = True

    def unread(self) -> None:
        self._noted = None

    def pick(self, now: datetime, limit: int) -> list[str]:
        """Up to ``limit`` destinations with jobs due by ``now``, whose turn comes first.

        They leave the heap until ``settle`` or ``restore`` puts them back, so that
        concurrent leases (PostgreSQL) start with other destinations.
        """
        picked: list[str] = []
        while self._heap and len(picked) < limit:
            turn, destination = self._heap[0]
            if turn > now:
                break
            heapq.heappop(self._heap)
            current = destination in self.due and self.turn(destination) == turn
            if current and destination not in picked:
                picked.append(destination)
        return picked

    def restore(self, picked: Iterable[str]) -> None:
        """The lease failed: the destinations it picked keep their turns."""
        for destination in picked:
            if destination in self.due:
                self._push(destination)

    def settle(self, now: datetime, quotas: dict[str, int], leased: Sequence[Job]) -> None:
        """Record a lease at ``now``: ``quotas`` is what was asked of each destination picked.

        A destination that gave less than asked has nothing more due that is not leased
        (or locked by another lease): it leaves the view until it is noted or read
        again. Those that gave jobs are stamped served, in the order they were served:
        the one given the most jobs last, ties in turn order, as in the Redis queue.
        """
        counts = Counter(job.destination for job in leased)
        for destination, quota in quotas.items():
            if counts[destination] < quota:
                self.due.pop(destination, None)
        earliest: dict[str, datetime] = {}
        for job in leased:
            if job.destination not in earliest or job.due_at < earliest[job.destination]:
                earliest[job.destination] = job.due_at
        position = {destination: i for i, destination in enumerate(quotas)}
        order = sorted(counts, key=lambda d: (counts[d], position.get(d, len(position)), d))
        for step, destination in enumerate(order, start=1):
            self.served[destination] = now + timedelta(microseconds=step)
            if self._unseen is not None:
                self._unseen.discard(destination)
            if destination not in quotas and destination not in self.due:
                # Served by the earliest-due step, unknown until now: its other jobs
                # are due no earlier than this one, as far as this lease could see.
                self.due[destination] = earliest[destination]
        for destination in {*quotas, *counts}:
            if destination in self.due:
                self._push(destination)


class EmbeddedQueue(Queue):
    shares_store = True

    def __init__(self, db: Database) -> None:
        self.db = db
        self._turns = _Turns()
        #: time.monotonic() after which the next lease reads destinations again.
        self._read_after = 0.0
        #: The last destination read in this round of reads ("": a round begins).
        self._read_from = ""
        self._buckets = BucketTaker(db)
        #: Reads of the destinations started by ``lease_in`` (kept referenced until done).
        self._reading: set[asyncio.Task[None]] = set()
        #: The leases that ``confirm`` asks about at the same time, read in one go.
        self._leases: GroupRead[str, tuple[str | None, datetime | None] | None] = GroupRead(
            self._read_leases, name="lease confirmations"
        )

    async def enqueue(
        self, jobs: Sequence[Job], conn: AsyncConnection | None = None, *, fresh: bool = False
    ) -> None:
        if not jobs:
            return
        if conn is not None:
            await self._insert_new(conn, jobs, fresh)
            return
        async with self.db.write() as own:
            await self._insert_new(own, jobs, fresh)

    async def _insert_new(self, conn: AsyncConnection, jobs: Sequence[Job], fresh: bool) -> None:
        """Insert the jobs whose (email_id, destination) has none yet (``Queue.enqueue``).

        One lookup for the batch, in the caller's transaction. SQLite runs one writer
        at a time, so the check is exact there; on PostgreSQL two transactions could
        both insert the same new pair, which only a unique index would prevent. Jobs of
        ``fresh`` emails skip it: the lookup was a trip of its own while the accept's
        write held SQLite's lock, which its INSERTs otherwise leave after one.
        """
        email_ids = [] if fresh else sorted({job.email_id for job in jobs})
        seen: set[tuple[str, str]] = set()
        for start in range(0, len(email_ids), _LOOKUP_CHUNK):
            chunk = email_ids[start : start + _LOOKUP_CHUNK]
            existing = await conn.execute(
                select(jobs_table.c.email_id, jobs_table.c.destination).where(
                    jobs_table.c.email_id.in_(chunk)
                )
            )
            seen.update((row.email_id, row.destination) for row in existing)
        now = utcnow()
        new: list[Job] = []
        rows = []
        for job in jobs:
            if (job.email_id, job.destination) in seen:
                continue
            seen.add((job.email_id, job.destination))
            new.append(job)
            rows.append(
                {
                    "id": job.id,
                    "email_id": job.email_id,
                    "destination": job.destination,
                    "recipient_ids": job.recipient_ids,
                    "body_ref": job.body_ref,
                    "attempt": job.attempt,
                    "due_at": job.due_at,
                    "created_at": now,
                }
            )
        await insert_in_parts(conn, jobs_table, rows)
        if new and not self.db.is_sqlite:
            # Heard at the commit by every worker on this database (``watch_work``).
            await self.db.notify(conn, WORK_CHANNEL)
        # Before the caller commits, if it does: a destination noted for nothing
        # only costs a look at it in the next lease.
        for job in new:
            self._turns.note(job.destination, job.due_at)

    async def watch_work(self, work_arrived: Callable[[], None], stop: asyncio.Event) -> None:
        """On PostgreSQL, LISTEN for the NOTIFY that every enqueue sends with its commit.

        So that ``postline worker`` processes beside ``postline api`` (the embedded queue
        in a shared PostgreSQL database, no Redis) lease new mail at once rather than at
        their next poll, as with the Redis queue. On SQLite there is nothing to watch
        (``Queue.watch_work``). A lost connection is listened on again with backoff;
        meanwhile the polls find the jobs.
        """
        if self.db.is_sqlite:
            await super().watch_work(work_arrived, stop)
            return
        backoff = Backoff("listening for new jobs in PostgreSQL")
        told = asyncio.Event()
        while not stop.is_set():
            try:
                async with self.db.listen(WORK_CHANNEL, told.set) as listening:
                    backoff.succeeded()
                    await relay_announcements(told, work_arrived, stop, listening)
            except Exception as exc:  # PostgreSQL away, or anything else: the polls go on
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
        if time.monotonic() >= self._read_after:
            await self._read_destinations()
        async with self.db.write() as conn:
            # Inside the write: on SQLite, this process's leases take turns one after
            # the other, each seeing the turns the one before it left.
            return await self.lease_in(conn, owner, limit, lease_seconds, held_back)

    async def lease_in(
        self,
        conn: AsyncConnection,
        owner: str,
        limit: int,
        lease_seconds: float,
        held_back: Collection[str] = frozenset(),
    ) -> list[Job]:
        if limit <= 0:
            return []
        if time.monotonic() >= self._read_after:
            # Inside the caller's transaction (the recorder's refill, which may lease
            # for as long as deliveries finish): read beside it, for the next lease.
            self._read_after = math.inf
            reading = asyncio.create_task(self._read_in_background(), name="queue turns read")
            self._reading.add(reading)
            reading.add_done_callback(self._reading.discard)
        picked: list[str] = []
        try:
            now = utcnow()
            picked = self._turns.pick(now, limit)
            share, extra = divmod(limit, len(picked)) if picked else (0, 0)
            quotas = {d: share + (i < extra) for i, d in enumerate(picked)}
            params: dict[str, Any] = {
                "now": now,
                "owner": owner,
                "until": now + timedelta(seconds=lease_seconds),
            }
            rows = await self._claim_by_turns(conn, quotas, params)
            if len(rows) < limit and held_back:
                # The held back destinations had their turns: the slots left go to
                # the others' earliest jobs (``Queue.lease``), theirs only if alone.
                rows += await self._fill(conn, limit, rows, params, held_back)
            others = held_back and any(row.destination not in held_back for row in rows)
            if len(rows) < limit and not others:
                rows += await self._fill(conn, limit, rows, params)
        except BaseException:
            self._turns.restore(picked)
            raise
        jobs = sorted((Job.from_row(row) for row in rows), key=lambda job: job.due_at)
        self._turns.settle(now, quotas, jobs)
        return jobs

    async def _fill(
        self,
        conn: AsyncConnection,
        limit: int,
        rows: list[Any],
        params: dict[str, Any],
        held_back: Collection[str] = (),
    ) -> list[Any]:
        """Lease the earliest available jobs, but those of ``held_back``, up to ``limit``
        with ``rows`` (those this lease took already)."""
        params = params | {"limit": limit - len(rows), "taken": [row.id for row in rows]}
        if held_back:
            params["held"] = list(held_back)
        claim = _claim_earliest(self.db.is_sqlite, bool(held_back))
        return list((await conn.execute(claim, params)).all())

    async def _claim_by_turns(
        self, conn: AsyncConnection, quotas: dict[str, int], params: dict[str, Any]
    ) -> list[Any]:
        """Lease up to ``quotas[d]`` of the earliest available jobs of each destination d."""
        if not quotas:
            return []
        if not self.db.is_sqlite:
            turns = {"destinations": list(quotas), "quotas": list(quotas.values())}
            limit = {"limit": sum(quotas.values())}
            result = await conn.execute(_claim_by_turns_postgresql(), params | turns | limit)
            return list(result.all())
        rows: list[Any] = []
        items = list(quotas.items())
        for start in range(0, len(items), _MOST_TURNS):
            part = items[start : start + _MOST_TURNS]
            turns = {f"d{i}": destination for i, (destination, _) in enumerate(part)}
            turns |= {f"k{i}": quota for i, (_, quota) in enumerate(part)}
            claim = _claim_by_turns_sqlite(len(part))
            rows += (await conn.execute(claim, params | turns)).all()
        return rows

    async def close(self) -> None:
        for reading in list(self._reading):
            reading.cancel()
        await asyncio.gather(*self._reading, return_exceptions=True)

    async def _read_in_background(self) -> None:
        """``_read_destinations`` for a lease that could not wait for it: a failure
        leaves the view as it was until the next read (a second later)."""
        try:
            await self._read_destinations()
        except Exception as exc:
            log.warning("reading the destinations with jobs failed: %s", type(exc).__name__)

    async def _read_destinations(self) -> None:
        """Read the next destinations with jobs, and the earliest due of each, into the view.

        Outside the write transaction, which on SQLite holds up every other writer.
        A round of reads goes over every destination, ``_READ_CHUNK`` at a time.
        """
        self._read_after = math.inf  # one read at a time; concurrent leases use the view
        started, clock = utcnow(), time.monotonic()
        self._turns.reading()
        params = {"after": self._read_from, "chunk": _READ_CHUNK, "now": started}
        try:
            async with self.db.read() as conn:
                rows = (await conn.execute(_walk(self.db.is_sqlite), params)).all()
        except BaseException:
            self._turns.unread()
            self._read_after = time.monotonic() + _ROUND_SECONDS
            raise
        last = len(rows) < _READ_CHUNK
        self._turns.read([(row.destination, row.due_at) for row in rows], last)
        self._read_from = "" if last else rows[-1].destination
        pause = _READ_COST_FACTOR * (time.monotonic() - clock)
        self._read_after = time.monotonic() + (max(_ROUND_SECONDS, pause) if last else pause)

    async def extend(self, job: Job, lease_seconds: float) -> bool:
        until = utcnow() + timedelta(seconds=lease_seconds)
        async with self.db.write() as conn:
            result = await conn.execute(
                update(jobs_table).where(self._owned(job)).values(lease_until=until)
            )
        return bool(result.rowcount)

    async def confirm(self, job: Job, lease_seconds: float) -> bool:
        """A read, not a write, while enough of the lease is left (``Queue.confirm``).

        Every message asks before its final dot, and on SQLite a write holds up
        every other writer and waits for a sync to disk. Looking is as good as
        renewing for the answer: the lease is lost exactly when its row names
        another owner or none (a lease runs out, or a dead owner's is freed, only
        by another worker's write), and a row that still names this owner with
        most of its lease ahead stays this owner's for that long while its
        heartbeat runs, as a renewed one would. The confirmations of concurrent
        deliveries share one read.
        """
        if job.lease_owner is None:
            return False
        lease = await self._leases.get(job.id)
        if lease is None or lease[0] != job.lease_owner:
            return False
        until = lease[1]
        if until is not None and until - utcnow() >= timedelta(
            seconds=CONFIRM_SHARE * lease_seconds
        ):
            return True
        return await self.extend(job, lease_seconds)

    async def _read_leases(self, ids: list[str]) -> list[tuple[str | None, datetime | None] | None]:
        async with self.db.read() as conn:
            rows = await conn.execute(_leases(), {"ids": sorted(set(ids))})
            found = {row.id: (row.lease_owner, row.lease_until) for row in rows}
        return [found.get(job_id) for job_id in ids]

    async def _run(self, statement: Any, conn: AsyncConnection | None, params: Any = None) -> int:
        """Run ``statement`` in ``conn``, or in a write of its own; how many rows it changed."""
        if conn is not None:
            result = await conn.execute(statement, params)
        else:
            async with self.db.write() as own:
                result = await own.execute(statement, params)
        return int(result.rowcount or 0)

    def _owned(self, job: Job) -> Any:
        """The job, while ``job``'s owner holds its lease (never a job nobody holds:
        ``== None`` would be IS NULL, and match it)."""
        if job.lease_owner is None:
            return false()
        return (jobs_table.c.id == job.id) & (jobs_table.c.lease_owner == job.lease_owner)

    async def ack(self, job: Job, conn: AsyncConnection | None = None) -> bool:
        return await self.ack_all([job], conn) == 1

    async def ack_all(self, jobs: Sequence[Job], conn: AsyncConnection | None = None) -> int:
        """One statement per owner (a batch has one): the recorder acks a whole batch
        in its transaction."""
        by_owner: dict[str, list[str]] = {}
        for job in jobs:
            if job.lease_owner is not None:
                by_owner.setdefault(job.lease_owner, []).append(job.id)
        acked = 0
        for owner, ids in by_owner.items():
            acked += await self._run(_ack_owned(), conn, {"ids": ids, "owner": owner})
        return acked

    async def retry(
        self,
        job: Job,
        due_at: datetime,
        recipient_ids: Sequence[str],
        conn: AsyncConnection | None = None,
    ) -> bool:
        statement = (
            update(jobs_table)
            .where(self._owned(job))
            .values(
                due_at=due_at,
                attempt=job.attempt + 1,
                recipient_ids=list(recipient_ids),
                lease_owner=None,
                lease_until=None,
            )
        )
        if not await self._run(statement, conn):
            return False
        self._turns.note(job.destination, due_at)
        return True

    async def release(self, job: Job) -> bool:
        statement = (
            update(jobs_table).where(self._owned(job)).values(lease_owner=None, lease_until=None)
        )
        if not await self._run(statement, None):
            return False
        self._turns.note(job.destination, job.due_at)
        return True

    async def discard(
        self, email_id: str, destinations: Sequence[str], conn: AsyncConnection | None = None
    ) -> int:
        """In the caller's transaction when given: a cancellation and the removal of its
        jobs commit together. The view of turns may still name the destination; a
        lease that finds nothing of it there only looks once more."""
        if not destinations:
            return 0
        statement = delete(jobs_table).where(
            jobs_table.c.email_id == email_id,
            jobs_table.c.destination.in_(sorted(set(destinations))),
            _not_leased(utcnow()),
        )
        return await self._run(statement, conn)

    async def recover_expired(self) -> int:
        """Free expired leases and those of owners without a live heartbeat.

        A read first, through the index on lease_owner: every worker runs this
        at each heartbeat, and on SQLite a write, even one that changes nothing,
        holds up every other writer. Dead workers' heartbeats go in the same write.
        """
        now = utcnow()
        async with self.db.read() as conn:
            abandoned = (
                await conn.execute(select(jobs_table.c.id).where(_abandoned(now)).limit(1))
            ).first()
            dead = (await conn.execute(_dead_heartbeats(now).limit(1))).first()
        if abandoned is None and dead is None:
            return 0
        async with self.db.write() as conn:
            result = await conn.execute(
                update(jobs_table).where(_abandoned(now)).values(lease_owner=None, lease_until=None)
            )
            await conn.execute(delete(heartbeats_table).where(heartbeats_table.c.alive_until < now))
        return int(result.rowcount or 0)

    async def beat(self, owner: str, ttl_seconds: float) -> None:
        """An upsert of the owner's row: one short write per worker per heartbeat."""
        alive_until = utcnow() + timedelta(seconds=ttl_seconds)
        async with self.db.write() as conn:
            renewed = await conn.execute(
                update(heartbeats_table)
                .where(heartbeats_table.c.owner == owner)
                .values(alive_until=alive_until)
            )
            if not renewed.rowcount:
                await conn.execute(
                    insert(heartbeats_table).values(owner=owner, alive_until=alive_until)
                )

    async def workers(self) -> set[str]:
        async with self.db.read() as conn:
            rows = await conn.execute(_live_owners(utcnow()))
            return {row.owner for row in rows}

    async def retire(self, owner: str) -> None:
        async with self.db.write() as conn:
            await conn.execute(delete(heartbeats_table).where(heartbeats_table.c.owner == owner))

    async def body_refs(self) -> set[str]:
        """Fail closed: orphan cleanup deletes spooled bodies not named here."""
        try:
            async with self.db.read() as conn:
                rows = await conn.execute(select(jobs_table.c.body_ref).distinct())
                return {row.body_ref for row in rows}
        except Exception as exc:
            raise QueueError(f"cannot list queued bodies: {type(exc).__name__}") from exc

    async def _count_by_destination(self, *where: Any) -> dict[str, int]:
        statement = select(jobs_table.c.destination, func.count()).group_by(
            jobs_table.c.destination
        )
        for condition in where:
            statement = statement.where(condition)
        async with self.db.read() as conn:
            return {row[0]: int(row[1]) for row in await conn.execute(statement)}

    async def depth(self) -> dict[str, int]:
        return await self._count_by_destination()

    async def in_flight(self) -> dict[str, int]:
        return await self._count_by_destination(jobs_table.c.lease_until >= utcnow())

    async def take_token(self, bucket: str, rate: float, burst: int, count: int = 1) -> Tokens:
        """A table in the store; concurrent takes share a transaction (``queue.buckets``)."""
        check_bucket(rate, burst, count)
        return await self._buckets.take(bucket, rate, burst, count)

    async def park(self, job: Job, until: datetime, conn: AsyncConnection | None = None) -> bool:
        """``parked_until`` marks the wait: :meth:`release_parked` finds it by that
        and by ``due_at`` still equal to it (a later retry moves ``due_at``)."""
        statement = (
            update(jobs_table)
            .where(self._owned(job))
            .values(due_at=until, parked_until=until, lease_owner=None, lease_until=None)
        )
        if not await self._run(statement, conn):
            return False
        self._turns.note(job.destination, until)
        return True

    async def release_parked(self, destination: str) -> int:
        now = utcnow()
        c = jobs_table.c
        async with self.db.write() as conn:
            result = await conn.execute(
                update(jobs_table)
                .where(
                    c.destination == destination,
                    c.parked_until.is_not(None),
                    c.due_at == c.parked_until,
                    c.due_at > now,
                    _not_leased(now),
                )
                .values(due_at=now, parked_until=None)
            )
        released = int(result.rowcount or 0)
        if released:
            self._turns.note(destination, now)
        return released
