"""The embedded queue: a table in Postline's own database.

Because it shares the store, accept writes jobs in the same transaction as
the email, and the recorder removes a job in the transaction that records its
outcome: no window in which one exists without the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from postline.queue.base import Job, Queue
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


class EmbeddedQueue(Queue):
    shares_store = True

    def __init__(self, db: Database) -> None:
        self.db = db

    async def enqueue(self, jobs: Sequence[Job], conn: AsyncConnection | None = None) -> None:
        if not jobs:
            return
        now = utcnow()
        rows = [
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
            for job in jobs
        ]
        if conn is not None:
            await conn.execute(insert(jobs_table), rows)
            return
        async with self.db.write() as own:
            await own.execute(insert(jobs_table), rows)

    async def lease(self, owner: str, limit: int, lease_seconds: float) -> list[Job]:
        now = utcnow()
        candidates = (
            select(jobs_table.c.id)
            .where(jobs_table.c.due_at <= now)
            .where((jobs_table.c.lease_until.is_(None)) | (jobs_table.c.lease_until < now))
            .order_by(jobs_table.c.due_at)
            .limit(limit)
        )
        if not self.db.is_sqlite:
            candidates = candidates.with_for_update(skip_locked=True)
        statement = (
            update(jobs_table)
            .where(jobs_table.c.id.in_(candidates.scalar_subquery()))
            .values(lease_owner=owner, lease_until=now + timedelta(seconds=lease_seconds))
            .returning(*jobs_table.c)
        )
        async with self.db.write() as conn:
            rows = (await conn.execute(statement)).all()
        return sorted((_job(row) for row in rows), key=lambda job: job.due_at)

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
        async with self.db.read() as conn:
            rows = await conn.execute(select(jobs_table.c.body_ref).distinct())
            return {row.body_ref for row in rows}

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
