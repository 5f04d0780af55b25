"""The embedded queue: a table in Postline's own database.

Because it shares the store, accept writes jobs in the same transaction as
the email, and the recorder removes a job in the transaction that records its
outcome: no window in which one exists without the other.

Leasing is fair across destinations (see ``Queue.lease``). The table keeps no
per-destination state, so each queue object remembers when it last served a
destination: within one process that is exact; several processes sharing a
PostgreSQL database are each fair on their own. Finding whose turn it is
reads every due job, so a lease costs time in proportion to the backlog
(about 0.1 s per 100k due jobs); a table of destinations, as the Redis
queue keeps, would take a migration.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from postline.queue.base import Job, Queue, QueueError
from postline.store.db import Database
from postline.store.schema import queue_jobs as jobs_table
from postline.store.types import utcnow


def _job(row: Any) -> Job:
    return Job(
        id=row.id,
        email_id=row.email_id,
        destination=row.destination,
        recipient_ids=list(row.recipient_ids),
        body_ref=row.body_ref,
        attempt=row.attempt,
        due_at=row.due_at,
        lease_owner=row.lease_owner,
        lease_until=row.lease_until,
        created_at=row.created_at,
    )


#: Email ids looked up per query when enqueueing: under every driver's bind parameter limit.
_LOOKUP_CHUNK = 1000


def _available(now: datetime) -> Any:
    """Due, and not leased (or the lease expired): what lease may take."""
    return (jobs_table.c.due_at <= now) & (
        jobs_table.c.lease_until.is_(None) | (jobs_table.c.lease_until < now)
    )


class EmbeddedQueue(Queue):
    shares_store = True

    def __init__(self, db: Database) -> None:
        self.db = db
        #: destination -> when this queue last leased one of its jobs (only destinations
        #: that had due jobs at the last lease, so it stays as small as the backlog).
        self._served: dict[str, datetime] = {}

    async def enqueue(self, jobs: Sequence[Job], conn: AsyncConnection | None = None) -> None:
        if not jobs:
            return
        if conn is not None:
            await self._insert_new(conn, jobs)
            return
        async with self.db.write() as own:
            await self._insert_new(own, jobs)

    async def _insert_new(self, conn: AsyncConnection, jobs: Sequence[Job]) -> None:
        """Insert the jobs whose (email_id, destination) has none yet (``Queue.enqueue``).

        One lookup for the batch, in the caller's transaction. SQLite runs one writer
        at a time, so the check is exact there; on PostgreSQL two transactions could
        both insert the same new pair, which only a unique index would prevent.
        """
        email_ids = sorted({job.email_id for job in jobs})
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
        rows = []
        for job in jobs:
            if (job.email_id, job.destination) in seen:
                continue
            seen.add((job.email_id, job.destination))
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
        if rows:
            await conn.execute(insert(jobs_table), rows)

    async def lease(self, owner: str, limit: int, lease_seconds: float) -> list[Job]:
        if limit <= 0:
            return []
        now = utcnow()
        # Whose turn it is needs a scan of every due job: do it outside the write
        # transaction, which on SQLite holds up every other writer. The claim checks
        # again that each job is still available.
        async with self.db.read() as conn:
            turns = await self._turns(conn, now, limit)
        if not turns:
            return []
        statement = self._claim(turns, now, limit).values(
            lease_owner=owner, lease_until=now + timedelta(seconds=lease_seconds)
        )
        async with self.db.write() as conn:
            rows = (await conn.execute(statement)).all()
        self._remember(turns, [row.destination for row in rows], now)
        return sorted((_job(row) for row in rows), key=lambda job: job.due_at)

    async def _turns(self, conn: AsyncConnection, now: datetime, limit: int) -> list[str]:
        """Up to ``limit`` destinations with due jobs, whose turn comes first.

        A destination's turn is the later of its earliest due job and when it was
        last served, as in the Redis queue: the one served least recently goes first.
        """
        statement = (
            select(jobs_table.c.destination, func.min(jobs_table.c.due_at))
            .where(_available(now))
            .group_by(jobs_table.c.destination)
        )
        earliest: dict[str, datetime] = {row[0]: row[1] for row in await conn.execute(statement)}
        self._served = {d: at for d, at in self._served.items() if d in earliest}

        def turn(destination: str) -> tuple[datetime, str]:
            due = earliest[destination]
            return max(due, self._served.get(destination, due)), destination

        return sorted(earliest, key=turn)[:limit]

    def _claim(self, turns: list[str], now: datetime, limit: int) -> Any:
        """The UPDATE leasing round-robin over ``turns``: every destination's earliest
        due job in turn order, then every second earliest, and so on.
        """
        ranked = (
            select(
                jobs_table.c.id,
                jobs_table.c.destination,
                func.row_number()
                .over(
                    partition_by=jobs_table.c.destination,
                    order_by=(jobs_table.c.due_at, jobs_table.c.id),
                )
                .label("nth"),
            )
            .where(_available(now), jobs_table.c.destination.in_(turns))
            .subquery()
        )
        order = (
            ranked.c.nth,
            case({d: i for i, d in enumerate(turns)}, value=ranked.c.destination),
        )
        if self.db.is_sqlite:
            # One writer at a time: nothing to lock. No destination can give more than
            # ``limit`` jobs, and cutting the rest before sorting keeps big backlogs cheap.
            candidates = (
                select(ranked.c.id).where(ranked.c.nth <= limit).order_by(*order).limit(limit)
            )
        else:
            # PostgreSQL refuses FOR UPDATE next to a window function, so the rows are
            # locked in a query around the ranking. SKIP LOCKED: concurrent leases take
            # the next jobs instead of waiting (which is why nothing is cut by rank), and
            # the rows are checked again once locked.
            candidates = (
                select(jobs_table.c.id)
                .join(ranked, ranked.c.id == jobs_table.c.id)
                .where(_available(now))
                .order_by(*order)
                .limit(limit)
                .correlate(None)
                .with_for_update(skip_locked=True, of=jobs_table)
            )
        return (
            update(jobs_table)
            .where(jobs_table.c.id.in_(candidates.scalar_subquery()))
            .returning(*jobs_table.c)
        )

    def _remember(self, turns: list[str], leased: list[str], now: datetime) -> None:
        """Stamp the destinations just served, in the order they were last served."""
        counts = Counter(leased)
        position = {d: i for i, d in enumerate(turns)}
        last_served = sorted(counts, key=lambda d: (counts[d], position.get(d, len(turns))))
        for step, destination in enumerate(last_served, start=1):
            self._served[destination] = now + timedelta(microseconds=step)

    async def extend(self, job: Job, lease_seconds: float) -> bool:
        until = utcnow() + timedelta(seconds=lease_seconds)
        async with self.db.write() as conn:
            result = await conn.execute(
                update(jobs_table)
                .where(jobs_table.c.id == job.id, jobs_table.c.lease_owner == job.lease_owner)
                .values(lease_until=until)
            )
        if result.rowcount:
            job.lease_until = until
        return bool(result.rowcount)

    async def _run(self, statement: Any, conn: AsyncConnection | None) -> None:
        if conn is not None:
            await conn.execute(statement)
            return
        async with self.db.write() as own:
            await own.execute(statement)

    def _owned(self, job: Job) -> Any:
        return (jobs_table.c.id == job.id) & (jobs_table.c.lease_owner == job.lease_owner)

    async def ack(self, job: Job, conn: AsyncConnection | None = None) -> None:
        await self._run(delete(jobs_table).where(self._owned(job)), conn)

    async def retry(
        self,
        job: Job,
        due_at: datetime,
        recipient_ids: Sequence[str],
        conn: AsyncConnection | None = None,
    ) -> None:
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
        await self._run(statement, conn)

    async def release(self, job: Job) -> None:
        statement = (
            update(jobs_table).where(self._owned(job)).values(lease_owner=None, lease_until=None)
        )
        await self._run(statement, None)

    async def recover_expired(self) -> int:
        now = utcnow()
        async with self.db.write() as conn:
            result = await conn.execute(
                update(jobs_table)
                .where(jobs_table.c.lease_until < now)
                .values(lease_owner=None, lease_until=None)
            )
        return int(result.rowcount or 0)

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
