"""Record delivery attempts: every recipient outcome of an attempt in one transaction.

The recipients, their timeline rows, their events, the email's derived status
and (with the embedded queue) the job's ack or retry commit together, so a
crash leaves either all of an attempt's record or none of it.

Attempts finishing at the same time share one commit (group commit): while
one transaction is being written, the next ones gather, so the cost of a
durable commit (an fsync on SQLite) is paid once per batch, not per message.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncConnection

from postline.delivery.bounces import BounceNotifier, Failure
from postline.delivery.tls import TlsInfo
from postline.ids import new_id
from postline.metrics import Metrics
from postline.model import PENDING_STATUSES, AttemptScope, RecipientStatus
from postline.outcomes import (
    AttemptInfo,
    Move,
    Outcome,
    OutcomeRows,
    plan_move,
    record_move,
    store_email_statuses,
)
from postline.queue import Job, Queue
from postline.store import attempts as attempt_store
from postline.store import emails as email_store
from postline.store.batching import Batcher
from postline.store.db import Database
from postline.store.emails import Email, Recipient
from postline.store.types import Clock, utcnow
from postline.wakeups import Wakeups

log = logging.getLogger("postline.delivery")


@dataclass(frozen=True)
class RecipientResult:
    recipient_id: str
    outcome: Outcome
    scope: AttemptScope
    #: False for a move decided without talking to the MX (suppressed before
    #: sending): it gets its event but no timeline row.
    attempted: bool = True

    @property
    def is_real_attempt(self) -> bool:
        """Whether delivery was really tried: only such a deferral can expire.

        A job parked behind an open breaker never reached the destination, so
        it must not turn a recipient ``failed``; its next real attempt decides.
        """
        return self.attempted and self.scope is not AttemptScope.BREAKER


@dataclass(frozen=True)
class Wait:
    """A job parked behind its destination's open breaker: nothing was sent, nothing counts."""

    #: When the breaker opened: a recipient gets one timeline row (and one
    #: ``email.deferred``) per opening, at its first wait after this instant.
    since: datetime
    #: When the job is due again, unless the breaker's recovery releases it sooner.
    until: datetime
    #: The timeline row's text, e.g. "waiting: circuit breaker for gmail.com, next trial at T".
    response: str


@dataclass
class _Attempt:
    job: Job
    results: Sequence[RecipientResult]
    mx_host: str | None
    duration_ms: int
    retry_at: datetime
    tls: TlsInfo | None = None
    recorded: list[tuple[str, RecipientStatus]] = field(default_factory=list)
    dsn_jobs: list[Job] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    #: Set for a park (:meth:`Recorder.park`) instead of an attempt.
    wait: Wait | None = None


@dataclass(frozen=True)
class _Step:
    """One recipient of an attempt, decided before the batch's moves are written."""

    recipient_id: str
    #: None: the recipient stays as it is (the state machine refused, or a park
    #: found it told of this opening already).
    move: Move | None
    #: For a recipient left as it is: whether the job still holds it (parked again).
    keep_pending: bool = False


class _BatchState:
    """What a recorder batch reads before it writes, kept current as it moves recipients.

    Three statements for the whole batch instead of three per attempt; two
    attempts of one batch for the same email (two destinations) see each
    other's moves, as they did when each read the store again.
    """

    def __init__(
        self, emails: list[Email], recipients: list[Recipient], sequences: dict[str, int]
    ) -> None:
        self.emails = {email.id: email for email in emails}
        #: Each recipient as it stands now, in this batch: replaced (frozen) when it moves.
        self.recipients: dict[str, Recipient] = {}
        self._by_email: dict[str, list[str]] = defaultdict(list)
        for recipient in recipients:
            self.recipients[recipient.id] = recipient
            self._by_email[recipient.email_id].append(recipient.id)
        self._sequences = sequences

    @classmethod
    async def read(cls, conn: AsyncConnection, email_ids: list[str]) -> _BatchState:
        # The emails first: on PostgreSQL this locks them, in id order.
        emails = await email_store.lock_emails(conn, email_ids)
        recipients = await email_store.recipients_of(conn, email_ids)
        sequences = await email_store.last_event_sequences(conn, email_ids)
        return cls(emails, recipients, sequences)

    def recipients_of(self, email_id: str) -> list[Recipient]:
        return [self.recipients[recipient_id] for recipient_id in self._by_email[email_id]]

    def next_sequence(self, email_id: str) -> int:
        self._sequences[email_id] = self._sequences.get(email_id, 0) + 1
        return self._sequences[email_id]

    def moved(self, recipient: Recipient, status: RecipientStatus, *, attempts: int) -> None:
        self.recipients[recipient.id] = dataclasses.replace(
            recipient, status=status, attempts=attempts
        )


class Refill(Protocol):
    """The engine whose deliveries a recorder records, taking its next jobs in the
    recorder's transaction (:attr:`Recorder.refill`)."""

    def wanted(self, finishing: int) -> int:
        """How many jobs to lease now, as ``finishing`` deliveries are being recorded."""
        ...

    async def lease_in(self, conn: AsyncConnection, limit: int) -> list[Job]: ...

    def start(self, jobs: list[Job]) -> None:
        """Deliver jobs leased in a transaction that has committed."""
        ...


class Recorder:
    def __init__(
        self,
        db: Database,
        queue: Queue,
        metrics: Metrics,
        max_age_seconds: int,
        *,
        bounces: BounceNotifier | None,
        wakeups: Wakeups,
        clock: Clock = utcnow,
    ) -> None:
        self.db = db
        self.queue = queue
        self.metrics = metrics
        self.max_age_seconds = max_age_seconds
        self._batcher: Batcher[_Attempt] = Batcher(self._write, name="recorder")
        #: Sends DSNs for bounced and expired recipients (None: never).
        self.bounces = bounces
        #: Told after each commit: new events are waiting in the outbox.
        self.wakeups = wakeups
        #: The time source for expiry; tests move it forward instead of waiting days.
        self.clock = clock
        #: The running engine, on SQLite with the embedded queue: the transaction that
        #: finishes a batch of deliveries also leases the jobs that take their places,
        #: so a delivery process has one turn at SQLite's one writer per batch, not two
        #: (measured: 328 -> 394 emails/s end to end, docs/PERFORMANCE.md).
        self.refill: Refill | None = None

    def expired(self, email: Email, now: datetime | None = None) -> bool:
        """Whether ``email`` has waited ``max_age`` since it became due.

        It became due at its ``scheduled_at`` when it was scheduled, else when it
        was accepted: an email scheduled days ahead has its whole ``max_age``
        from the moment it may first be sent. ``now``: the recorder's clock.
        """
        due = email.due_at
        moment = self.clock() if now is None else now
        return (moment - due).total_seconds() >= self.max_age_seconds

    async def record(
        self,
        job: Job,
        results: Sequence[RecipientResult],
        *,
        mx_host: str | None,
        duration_ms: int,
        retry_at: datetime,
        tls: TlsInfo | None = None,
    ) -> list[str]:
        """Store the attempt durably; return the recipient ids that will be retried.

        ``tls``: what the connection had (or the policy that deferred), for the timeline."""
        attempt = _Attempt(job, results, mx_host, duration_ms, retry_at, tls)
        await self._batcher.submit(attempt)
        return list(attempt.pending)

    async def park(
        self, job: Job, waiting: Sequence[str], wait: Wait, skipped: Sequence[RecipientResult] = ()
    ) -> None:
        """Park the job behind its breaker: no attempt counted, the retry step unchanged.

        ``waiting``: the recipients that would have been sent to; those without a
        wait row in this opening get one (deferred, with the next trial's time)
        and their ``email.deferred``. ``skipped``: moves decided without the MX
        (suppressed), recorded as usual. Shares the recorder's group commit.
        """
        results = list(skipped) + [
            RecipientResult(
                r,
                Outcome(status=RecipientStatus.DEFERRED, response=wait.response),
                AttemptScope.BREAKER,
            )
            for r in waiting
        ]
        attempt = _Attempt(job, results, None, 0, wait.until, wait=wait)
        await self._batcher.submit(attempt)

    async def _write(self, batch: list[_Attempt]) -> None:
        now = self.clock()
        async with self.db.write() as conn:
            state = await _BatchState.read(conn, [attempt.job.email_id for attempt in batch])
            rows = OutcomeRows()
            wave: list[tuple[_Attempt, list[_Step]]] = []
            moving: set[str] = set()  # the recipients of the wave's steps
            for attempt in sorted(batch, key=lambda a: a.job.email_id):
                attempt.recorded.clear()
                attempt.pending.clear()
                if any(result.recipient_id in moving for result in attempt.results):
                    # The same recipient twice: the first move is written, then the second
                    # decided on its result.
                    await self._settle(conn, wave, now, state, rows)
                    wave, moving = [], set()
                if attempt.wait is None:
                    steps = self._plan(attempt, now, state)
                else:
                    steps = await self._plan_wait(conn, attempt, attempt.wait, now, state)
                wave.append((attempt, steps))
                moving.update(step.recipient_id for step in steps)
            await self._settle(conn, wave, now, state, rows)
            await rows.flush(conn)
            await store_email_statuses(
                conn,
                [
                    (email, [r.status for r in state.recipients_of(email.id)])
                    for email in state.emails.values()
                ],
                now,
            )
            # The engine as it was when leasing: one that stops meanwhile (and unhooks
            # itself) still hears of the jobs it was given, and gives them back.
            refill = self.refill if self.db.is_sqlite else None
            refilled: list[Job] = []
            if self.queue.shares_store:
                await self._finish_all(batch, conn)
                if refill is not None:
                    refilled = await self._refill(conn, refill, len(batch))
        if refill is not None and refilled:
            refill.start(refilled)
        self.wakeups.events_written()
        for attempt in batch:
            if not self.queue.shares_store:
                await self._finish_outside(attempt)
            self._report(attempt)

    async def _refill(self, conn: AsyncConnection, refill: Refill, finishing: int) -> list[Job]:
        """The engine's next jobs, leased in this transaction (SQLite only: a statement
        that fails there is undone alone, so the outcomes still commit; on PostgreSQL it
        would abort them, and PostgreSQL has no one writer to save turns at)."""
        wanted = refill.wanted(finishing)
        if wanted <= 0:
            return []
        try:
            return await refill.lease_in(conn, wanted)
        except Exception as exc:
            # The engine's own loop leases them instead, in a transaction of its own.
            log.warning("leasing with the outcomes failed: %s", type(exc).__name__)
            return []

    async def _finish_outside(self, attempt: _Attempt) -> None:
        """Ack or retry in a queue outside the store, after the outcome is committed.

        If the queue is away, the outcome stands: the job's lease expires, the job
        is leased again and finds those recipients final; DSN jobs not enqueued are
        restored from the database by housekeeping.
        """
        try:
            await self._finish(attempt, None)
            await self.queue.enqueue(attempt.dsn_jobs)
        except Exception as exc:
            log.warning(
                "queue unavailable after recording job_id=%s; its lease will expire: %s",
                attempt.job.id,
                type(exc).__name__,
            )

    def _plan(self, attempt: _Attempt, now: datetime, state: _BatchState) -> list[_Step]:
        job = attempt.job
        email = state.emails.get(job.email_id)
        if email is None:  # deleted while queued: nothing left to do
            return []
        expired = self.expired(email, now)
        attempt_id = new_id("att_")
        steps: list[_Step] = []
        for result in attempt.results:
            recipient = state.recipients.get(result.recipient_id)
            if recipient is None or recipient.email_id != email.id:
                continue
            outcome = result.outcome
            if outcome.status is RecipientStatus.DEFERRED and expired and result.is_real_attempt:
                outcome = Outcome(
                    status=RecipientStatus.FAILED,
                    smtp_code=outcome.smtp_code,
                    enhanced_code=outcome.enhanced_code,
                    response=outcome.response,
                    bounce_type=outcome.bounce_type,
                    bounce_rule=outcome.bounce_rule,
                    reason=f"expired after {recipient.attempts + 1} attempts",
                )
            info = AttemptInfo(
                attempt_id=attempt_id,
                attempt=recipient.attempts + 1,
                mx_host=attempt.mx_host,
                duration_ms=attempt.duration_ms,
                scope=result.scope,
                tls=attempt.tls,
                next_attempt_at=attempt.retry_at
                if outcome.status is RecipientStatus.DEFERRED
                else None,
            )
            move = plan_move(
                email=email,
                recipient=recipient,
                outcome=outcome,
                now=now,
                attempt=info if result.attempted else None,
            )
            steps.append(_Step(recipient.id, move))
        return steps

    async def _plan_wait(
        self,
        conn: AsyncConnection,
        attempt: _Attempt,
        wait: Wait,
        now: datetime,
        state: _BatchState,
    ) -> list[_Step]:
        """A park's moves: no expiry and no attempt counted, as nothing was tried.

        A recipient already told of this opening is left as it is (no row, no
        event) but stays pending, so the job is parked for it again.
        """
        email = state.emails.get(attempt.job.email_id)
        if email is None:
            return []
        waiting = [r.recipient_id for r in attempt.results if r.scope is AttemptScope.BREAKER]
        told = await attempt_store.waited_since(conn, waiting, wait.since)
        attempt_id = new_id("att_")
        steps: list[_Step] = []
        for result in attempt.results:
            recipient = state.recipients.get(result.recipient_id)
            if recipient is None or recipient.email_id != email.id:
                continue
            if recipient.id in told:
                steps.append(_Step(recipient.id, None, recipient.status in PENDING_STATUSES))
                continue
            info = AttemptInfo(
                attempt_id=attempt_id,
                attempt=recipient.attempts,
                mx_host=None,
                duration_ms=0,
                scope=result.scope,
                next_attempt_at=wait.until,
                counted=False,
            )
            move = plan_move(
                email=email,
                recipient=recipient,
                outcome=result.outcome,
                now=now,
                attempt=info if result.attempted else None,
            )
            steps.append(_Step(recipient.id, move))
        return steps

    async def _settle(
        self,
        conn: AsyncConnection,
        wave: Sequence[tuple[_Attempt, list[_Step]]],
        now: datetime,
        state: _BatchState,
        rows: OutcomeRows,
    ) -> None:
        """Write the wave's moves in one statement per status, then what the moved ones bring.

        The guard in the statement has the last word: a recipient another writer
        moved first gets no row, no event and no sequence number.
        """
        moves = [step.move.row for _, steps in wave for step in steps if step.move is not None]
        moved = await email_store.move_recipients(conn, moves) if moves else set()
        for attempt, steps in wave:
            failures: list[Failure] = []
            for step in steps:
                move = step.move
                if move is None or step.recipient_id not in moved:
                    if step.keep_pending:
                        attempt.pending.append(step.recipient_id)
                    continue
                status = move.outcome.status
                await record_move(
                    conn, move, now, rows, sequence=state.next_sequence(move.email.id)
                )
                state.moved(move.recipient, status, attempts=move.attempts)
                attempt.recorded.append((step.recipient_id, status))
                if status is RecipientStatus.DEFERRED:
                    attempt.pending.append(step.recipient_id)
                if status in (RecipientStatus.BOUNCED, RecipientStatus.FAILED):
                    failures.append(Failure(move.recipient, move.outcome, attempt.mx_host))
            email = state.emails.get(attempt.job.email_id)
            if attempt.wait is None and email is not None:
                attempt.dsn_jobs = []
                if self.bounces is not None:
                    attempt.dsn_jobs = await self.bounces.notify(conn, email, failures, now)

    async def _finish(self, attempt: _Attempt, conn: AsyncConnection | None) -> None:
        if attempt.pending and attempt.wait is not None:
            done = await self.queue.park(attempt.job, attempt.wait.until, conn)
        elif attempt.pending:
            done = await self.queue.retry(attempt.job, attempt.retry_at, attempt.pending, conn)
        else:
            done = await self.queue.ack(attempt.job, conn)
        if not done:
            _taken_over([attempt.job], 1)

    async def _finish_all(self, batch: Sequence[_Attempt], conn: AsyncConnection) -> None:
        """Ack or retry every job of the batch in its transaction (embedded queue)."""
        finished = [a.job for a in batch if not a.pending]
        acked = await self.queue.ack_all(finished, conn)
        if acked < len(finished):
            _taken_over(finished, len(finished) - acked)
        for attempt in batch:
            if attempt.pending:
                await self._finish(attempt, conn)

    def _report(self, attempt: _Attempt) -> None:
        for recipient_id, status in attempt.recorded:
            self.metrics.recipient_outcomes.labels(status=str(status)).inc()
            log.info(
                "outcome email_id=%s recipient_id=%s status=%s destination=%s",
                attempt.job.email_id,
                recipient_id,
                status,
                attempt.job.destination,
            )


def _taken_over(jobs: Sequence[Job], lost: int) -> None:
    """The queue refused to finish jobs whose lease had gone to another worker.

    The lease is asked for right before the final dot, so this is a worker that
    stalled between the dot and its recording. The outcomes are recorded all the
    same; the new owner finds those recipients final and does not send to them again.
    """
    log.warning(
        "lease lost before recording: %d of job(s) %s belong to another worker now",
        lost,
        ",".join(job.id for job in jobs),
    )
