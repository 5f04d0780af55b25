"""Put back queue jobs the database says should exist.

With a queue outside the store (Redis), accept commits the email and then
enqueues its jobs: a crash between the two, or a Redis that restarts empty,
leaves recipients waiting in the database with no job to deliver them. The
database is the record of what was promised, so housekeeping rebuilds the
missing jobs from it. Enqueueing keeps at most one job per email and
destination, which makes this safe to run at any time, from every worker: a
pair that still has its job is left alone, and a job rebuilt for recipients
that became final meanwhile is leased, finds nothing to do and is acked.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from postline.ids import new_id
from postline.model import RecipientStatus
from postline.queue.base import Job, Queue
from postline.store.db import Database
from postline.store.recovery import WaitingRecipient, waiting_recipients


async def restore_missing_jobs(db: Database, queue: Queue, now: datetime, grace: float) -> int:
    """Enqueue a job for every waiting (email, destination) older than ``grace`` seconds.

    Returns how many jobs were offered to the queue (the queue skips the ones
    it already holds). The grace period keeps the sweep off emails whose accept
    is still between its commit and its enqueue.
    """
    async with db.read() as conn:
        rows = await waiting_recipients(conn, now - timedelta(seconds=grace))
    jobs = _jobs_for(rows, now)
    if jobs:
        await queue.enqueue(jobs)
    return len(jobs)


def _jobs_for(rows: list[WaitingRecipient], now: datetime) -> list[Job]:
    grouped: dict[tuple[str, str], list[WaitingRecipient]] = {}
    for row in rows:
        grouped.setdefault((row.email_id, row.destination), []).append(row)
    return [
        Job(
            id=new_id("job_"),
            email_id=email_id,
            destination=destination,
            recipient_ids=[r.id for r in recipients],
            body_ref=recipients[0].body_ref,
            due_at=min(_due(r, now) for r in recipients),
            attempt=max(r.attempts for r in recipients),
        )
        for (email_id, destination), recipients in grouped.items()
    ]


def _due(row: WaitingRecipient, now: datetime) -> datetime:
    if row.status == RecipientStatus.SCHEDULED and row.scheduled_at is not None:
        return row.scheduled_at
    if row.status == RecipientStatus.DEFERRED and row.next_attempt_at is not None:
        return row.next_attempt_at
    return now
