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

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from postline.ids import new_id
from postline.model import PENDING_STATUSES, EmailStatus, RecipientStatus
from postline.queue.base import Job, Queue
from postline.store.db import Database
from postline.store.schema import email_recipients, sent_emails

#: Emails whose derived status says some recipient still waits for delivery.
_WAITING_EMAILS = (EmailStatus.QUEUED, EmailStatus.SCHEDULED, EmailStatus.SENDING)


async def restore_missing_jobs(db: Database, queue: Queue, now: datetime, grace: float) -> int:
    """Enqueue a job for every waiting (email, destination) older than ``grace`` seconds.

    Returns how many jobs were offered to the queue (the queue skips the ones
    it already holds). The grace period keeps the sweep off emails whose accept
    is still between its commit and its enqueue.
    """
    cutoff = now - timedelta(seconds=grace)
    statement = (
        select(
            email_recipients.c.id,
            email_recipients.c.email_id,
            email_recipients.c.destination,
            email_recipients.c.status,
            email_recipients.c.attempts,
            email_recipients.c.next_attempt_at,
            sent_emails.c.scheduled_at,
            sent_emails.c.body_ref,
        )
        .join(sent_emails, sent_emails.c.id == email_recipients.c.email_id)
        .where(sent_emails.c.status.in_([str(s) for s in _WAITING_EMAILS]))
        .where(email_recipients.c.status.in_([str(s) for s in PENDING_STATUSES]))
        .where(email_recipients.c.created_at < cutoff)
        .order_by(email_recipients.c.email_id, email_recipients.c.position)
    )
    async with db.read() as conn:
        rows = (await conn.execute(statement)).all()
    jobs = _jobs_for(rows, now)
    if jobs:
        await queue.enqueue(jobs)
    return len(jobs)


def _jobs_for(rows: Sequence[Any], now: datetime) -> list[Job]:
    grouped: dict[tuple[str, str], list[Any]] = {}
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
            attempt=max(int(r.attempts or 0) for r in recipients),
        )
        for (email_id, destination), recipients in grouped.items()
    ]


def _due(row: Any, now: datetime) -> datetime:
    if row.status == RecipientStatus.SCHEDULED and row.scheduled_at is not None:
        return row.scheduled_at  # type: ignore[no-any-return]
    if row.status == RecipientStatus.DEFERRED and row.next_attempt_at is not None:
        return row.next_attempt_at  # type: ignore[no-any-return]
    return now
