"""Two workers recording outcomes for one email at the same moment lose nothing.

Each destination domain of an email is its own job, so two worker processes
can finish the same email's jobs at once. Each derives the email's status
from all of its recipients; without the row lock in ``lock_email`` each would
read the other's recipient as still queued and the later commit would leave
the email "sending" forever (and two events with the same sequence number).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest_asyncio
from sqlalchemy import func, select

from postline.accept import Acceptor, Recipient, Submission
from postline.compose import new_pool
from postline.config import normalize_database_url
from postline.delivery.record import RecipientResult, Recorder
from postline.domains import create_domain
from postline.keys import Principal
from postline.message import Content
from postline.metrics import Metrics
from postline.model import AttemptScope, BounceType, RecipientStatus, derive_email_status
from postline.outcomes import Outcome
from postline.queue import Job
from postline.queue.embedded import EmbeddedQueue
from postline.spool.database import DatabaseSpool
from postline.store import emails as email_store
from postline.store.db import Database
from postline.store.migrate import upgrade_async
from postline.store.schema import queue_jobs
from postline.store.sealing import SecretBox, new_key
from postline.store.types import utcnow
from postline.wakeups import Wakeups

ROUNDS = 20
ADMIN = Principal(key_id="key_test", name="test", domain_id=None, domain_name=None)
DELIVERED = Outcome(status=RecipientStatus.DELIVERED, smtp_code=250, response="250 2.0.0 OK")
BOUNCED = Outcome(
    status=RecipientStatus.BOUNCED,
    smtp_code=550,
    enhanced_code="5.1.1",
    response="550 5.1.1 no such user",
    bounce_type=BounceType.HARD,
)
#: What each destination answers: alpha.test delivers, beta.test bounces.
OUTCOME_FOR = {"alpha.test": DELIVERED, "beta.test": BOUNCED}


@dataclass
class Worker:
    """One worker process: its own engine (connections), queue handle and recorder."""

    name: str
    db: Database
    queue: EmbeddedQueue
    recorder: Recorder

    async def lease_one(self) -> Job:
        (job,) = await self.queue.lease(self.name, 1, 60)
        return job

    async def finish(self, job: Job) -> list[str]:
        outcome = OUTCOME_FOR[job.destination]
        return await self.recorder.record(
            job,
            [RecipientResult(rid, outcome, AttemptScope.RECIPIENT) for rid in job.recipient_ids],
            mx_host=f"mx.{job.destination}",
            duration_ms=3,
            retry_at=utcnow(),
        )


@dataclass
class Installation:
    acceptor: Acceptor
    workers: tuple[Worker, Worker]
    db: Database


@pytest_asyncio.fixture
async def installation(database_url: str) -> AsyncIterator[Installation]:
    """An API process and two worker processes sharing one store (and a database spool)."""
    url = normalize_database_url(database_url)
    await upgrade_async(url)
    # One secret key for the three handles, as hosts sharing a database have.
    box = SecretBox(new_key(), "test")
    databases = [Database(url, box) for _ in range(3)]
    api_db, *worker_dbs = databases
    pool = new_pool(1)

    def worker(index: int, db: Database) -> Worker:
        queue = EmbeddedQueue(db)
        recorder = Recorder(db, queue, Metrics(), 5 * 86400, bounces=None, wakeups=Wakeups())
        return Worker(f"worker-{index}", db, queue, recorder)

    try:
        await create_domain(api_db, "example.test")
        acceptor = Acceptor(
            api_db,
            DatabaseSpool(api_db),
            EmbeddedQueue(api_db),
            Metrics(),
            hostname="api.example.test",
            max_message_bytes=1_000_000,
            wakeups=Wakeups(),
            compose_pool=pool,
        )
        first, second = (worker(i, db) for i, db in enumerate(worker_dbs, 1))
        yield Installation(acceptor, (first, second), api_db)
    finally:
        for db in databases:
            await db.close()
        pool.shutdown()


async def _accept(acceptor: Acceptor, round_: int) -> str:
    a, b = f"a{round_}@alpha.test", f"b{round_}@beta.test"
    submission = Submission(
        content=Content(
            from_name="Sender",
            from_address="sender@example.test",
            to=[a, b],
            subject=f"round {round_}",
            text="Hello",
        ),
        recipients=[Recipient(a, "to"), Recipient(b, "to")],
    )
    (accepted,) = await acceptor.accept([submission], ADMIN)
    return accepted.id


async def _recorded(db: Database, email_id: str) -> dict[str, Any]:
    async with db.read() as conn:
        email = await email_store.get_email(conn, email_id)
        recipients = await email_store.get_recipients(conn, email_id)
        attempts = await email_store.get_attempts(conn, email_id)
        events = await email_store.get_events(conn, email_id)
        jobs = (
            await conn.execute(
                select(func.count())
                .select_from(queue_jobs)
                .where(queue_jobs.c.email_id == email_id)
            )
        ).scalar_one()
    assert email is not None
    return {
        "status": email.status,
        "recipients": recipients,
        "attempts": attempts,
        "events": events,
        "jobs": jobs,
    }


def _check(recorded: dict[str, Any], label: str) -> None:
    expected = derive_email_status([RecipientStatus.DELIVERED, RecipientStatus.BOUNCED])
    assert recorded["status"] == str(expected), label
    by_destination = {r.destination: r for r in recorded["recipients"]}
    for destination, outcome in OUTCOME_FOR.items():
        recipient = by_destination[destination]
        assert recipient.status == str(outcome.status), label
        assert recipient.attempts == 1, label
        assert recipient.smtp_code == outcome.smtp_code, label
        attempts = [a for a in recorded["attempts"] if a.recipient_id == recipient.id]
        assert [(a.status, a.attempt) for a in attempts] == [(str(outcome.status), 1)], label
        outcome_events = [
            e.type
            for e in recorded["events"]
            if e.recipient_id == recipient.id and e.type != "email.queued"
        ]
        assert outcome_events == [f"email.{outcome.status}"], label
    # Two queued events at accept, then one per outcome: each sequence number once.
    assert [e.sequence for e in recorded["events"]] == [1, 2, 3, 4], label
    assert recorded["jobs"] == 0, label  # both jobs acked in their recording transaction


async def test_two_workers_recording_one_email_at_once_lose_nothing(
    installation: Installation,
) -> None:
    first, second = installation.workers
    for round_ in range(ROUNDS):
        email_id = await _accept(installation.acceptor, round_)
        jobs = [await first.lease_one(), await second.lease_one()]
        assert sorted(job.destination for job in jobs) == sorted(OUTCOME_FOR)
        pending = await asyncio.gather(first.finish(jobs[0]), second.finish(jobs[1]))
        assert list(pending) == [[], []]
        _check(await _recorded(installation.db, email_id), f"round {round_}")


async def test_a_burst_of_emails_recorded_by_two_workers_loses_nothing(
    installation: Installation,
) -> None:
    """Each worker batches many emails into one commit, the two locking them in opposite order.

    On PostgreSQL that can deadlock; the database aborts one batch and the
    recorder writes its attempts one by one. Slower, but nothing may be lost.
    """
    first, second = installation.workers
    email_ids = [await _accept(installation.acceptor, round_) for round_ in range(ROUNDS)]
    leased = await first.queue.lease("dispatcher", 2 * ROUNDS, 60)
    alpha = sorted((j for j in leased if j.destination == "alpha.test"), key=lambda j: j.email_id)
    beta = sorted((j for j in leased if j.destination == "beta.test"), key=lambda j: j.email_id)
    assert len(alpha) == len(beta) == ROUNDS
    recording = [first.finish(job) for job in alpha] + [second.finish(job) for job in beta[::-1]]
    pending = await asyncio.wait_for(asyncio.gather(*recording), timeout=60)
    assert pending == [[]] * (2 * ROUNDS)
    for email_id in email_ids:
        _check(await _recorded(installation.db, email_id), email_id)


async def test_one_batch_holding_both_jobs_of_each_email_keeps_them_apart(
    installation: Installation,
) -> None:
    """One recorder commit with both destinations' attempts of the same emails.

    The batch reads every email, recipient and event sequence once, before it
    writes: the second attempt of an email must see the first one's move (its
    status and its event's sequence), not what the batch read.
    """
    first, _ = installation.workers
    email_ids = [await _accept(installation.acceptor, round_) for round_ in range(ROUNDS)]
    leased = await first.queue.lease(first.name, 2 * ROUNDS, 60)
    assert len(leased) == 2 * ROUNDS
    # Submitted in the same moment, so the recorder takes them as one batch.
    pending = await asyncio.wait_for(asyncio.gather(*(first.finish(j) for j in leased)), 60)
    assert pending == [[]] * (2 * ROUNDS)
    for email_id in email_ids:
        _check(await _recorded(installation.db, email_id), email_id)


async def test_one_batch_moving_a_recipient_twice_writes_both_moves_in_order(
    installation: Installation,
) -> None:
    """A batch writes its moves in one statement per status, so a recipient moved twice
    in one batch (a deferral, then the delivery: the same job recorded twice at once)
    must have the first move written before the second is decided: both timeline rows
    and both events, in order, and the recipient delivered after two attempts."""
    first, _ = installation.workers
    email_id = await _accept(installation.acceptor, 0)
    job = next(
        j for j in await first.queue.lease(first.name, 2, 60) if j.destination == "alpha.test"
    )
    deferred = Outcome(status=RecipientStatus.DEFERRED, smtp_code=451, response="451 4.7.1 later")

    def record(outcome: Outcome) -> Any:
        return first.recorder.record(
            job,
            [RecipientResult(rid, outcome, AttemptScope.RECIPIENT) for rid in job.recipient_ids],
            mx_host="mx.alpha.test",
            duration_ms=3,
            retry_at=utcnow(),
        )

    # Submitted in the same moment, so the recorder takes both as one batch.
    pending = await asyncio.wait_for(asyncio.gather(record(deferred), record(DELIVERED)), 60)
    assert list(pending) == [list(job.recipient_ids), []]
    recorded = await _recorded(installation.db, email_id)
    (recipient,) = [r for r in recorded["recipients"] if r.destination == "alpha.test"]
    assert (recipient.status, recipient.attempts, recipient.smtp_code) == (
        RecipientStatus.DELIVERED,
        2,
        250,
    )
    attempts = [(a.status, a.attempt) for a in recorded["attempts"]]
    assert attempts == [("deferred", 1), ("delivered", 2)]
    outcome_events = [(e.type, e.sequence) for e in recorded["events"] if e.type != "email.queued"]
    assert outcome_events == [("email.deferred", 3), ("email.delivered", 4)]
