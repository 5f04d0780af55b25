"""Record one delivery attempt: every recipient outcome, in one transaction.

The recipients, their timeline rows, their events, the email's derived status
and (with the embedded queue) the job's ack or retry commit together, so a
crash leaves either all of an attempt's record or none of it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from postline.ids import new_id
from postline.metrics import Metrics
from postline.model import RecipientStatus
from postline.outcomes import AttemptInfo, Outcome, apply_outcome, refresh_email_status
from postline.queue import Job, Queue
from postline.store import emails as email_store
from postline.store.db import Database
from postline.store.types import utcnow

log = logging.getLogger("postline.delivery")


@dataclass(frozen=True)
class RecipientResult:
    recipient_id: str
    outcome: Outcome
    scope: str  # "transaction" | "recipient"


class Recorder:
    def __init__(self, db: Database, queue: Queue, metrics: Metrics, max_age_seconds: int) -> None:
        self.db = db
        self.queue = queue
        self.metrics = metrics
        self.max_age_seconds = max_age_seconds

    async def record(
        self,
        job: Job,
        results: Sequence[RecipientResult],
        *,
        mx_host: str | None,
        duration_ms: int,
        retry_at: datetime,
    ) -> list[str]:
        """Store the attempt; return the recipient ids that will be retried."""
        now = utcnow()
        attempt_id = new_id("att_")
        recorded: list[tuple[str, RecipientStatus]] = []
        still_pending: list[str] = []
        async with self.db.write() as conn:
            email = await email_store.lock_email(conn, job.email_id)
            if email is None:  # deleted while queued: nothing left to do
                await self._finish(job, [], retry_at, conn)
                return []
            rows = {r.id: r for r in await email_store.get_recipients(conn, job.email_id)}
            expired = (now - email.created_at).total_seconds() >= self.max_age_seconds
            for result in results:
                recipient = rows.get(result.recipient_id)
                if recipient is None:
                    continue
                outcome = result.outcome
                if outcome.status is RecipientStatus.DEFERRED and expired:
                    outcome = Outcome(
                        status=RecipientStatus.FAILED,
                        smtp_code=outcome.smtp_code,
                        enhanced_code=outcome.enhanced_code,
                        response=outcome.response,
                        bounce_type=outcome.bounce_type,
                        reason=f"expired after {recipient.attempts + 1} attempts",
                    )
                attempt = AttemptInfo(
                    attempt_id=attempt_id,
                    attempt=recipient.attempts + 1,
                    mx_host=mx_host,
                    duration_ms=duration_ms,
                    scope=result.scope,
                    next_attempt_at=retry_at
                    if outcome.status is RecipientStatus.DEFERRED
                    else None,
                )
                moved = await apply_outcome(
                    conn,
                    email=email,
                    recipient=recipient,
                    outcome=outcome,
                    now=now,
                    attempt=attempt,
                )
                if moved:
                    recorded.append((recipient.id, outcome.status))
                if moved and outcome.status is RecipientStatus.DEFERRED:
                    still_pending.append(recipient.id)
            await refresh_email_status(conn, email, now)
            if self.queue.shares_store:
                await self._finish(job, still_pending, retry_at, conn)
        if not self.queue.shares_store:
            await self._finish(job, still_pending, retry_at, None)
        for recipient_id, status in recorded:
            self.metrics.recipient_outcomes.labels(status=str(status)).inc()
            log.info(
                "outcome email_id=%s recipient_id=%s status=%s destination=%s",
                job.email_id,
                recipient_id,
                status,
                job.destination,
            )
        return still_pending

    async def _finish(
        self, job: Job, pending: list[str], retry_at: datetime, conn: AsyncConnection | None
    ) -> None:
        if pending:
            await self.queue.retry(job, retry_at, pending, conn)
        else:
            await self.queue.ack(job, conn)
