"""Recording outcomes: one transaction, guarded by the state machine, on both stores."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Table, func, select, text, update

from postline.delivery.record import RecipientResult, Wait
from postline.ids import new_id
from postline.model import AttemptScope, BounceType, RecipientStatus, TlsInfo, TlsPolicySource
from postline.outcomes import Outcome
from postline.queue import Job
from postline.store import emails as email_store
from postline.store.schema import delivery_attempts, events, queue_jobs
from postline.store.types import utcnow
from tests.harness import FakeMX
from tests.harness.clock import MovableClock
from tests.harness.polling import poll
from tests.harness.postline import Factory, PostlineUnderTest


async def _count(pl: PostlineUnderTest, table: Table, **where: str) -> int:
    statement = select(func.count()).select_from(table)
    for column, value in where.items():
        statement = statement.where(table.c[column] == value)
    async with pl.services.db.read() as conn:
        return int((await conn.execute(statement)).scalar_one())


async def test_delivery_end_to_end_on_postgresql(
    postline_factory: Factory, postgres_url: str, fake_mx: FakeMX
) -> None:
    pl = await postline_factory(database_url=postgres_url)
    fake_mx.on_rcpt("gone@dest.test", "550 5.1.1 no such user")
    fake_mx.on_rcpt("slow@dest.test", "451 4.7.1 greylisted", "250 OK")
    sent = await pl.send(to=["ok@dest.test", "gone@dest.test", "slow@dest.test"])
    detail = await pl.wait_for_status(sent["id"], ["partially_delivered"])
    by_address = {r["address"]: r for r in detail["recipients"]}
    assert by_address["ok@dest.test"]["status"] == "delivered"
    assert by_address["gone@dest.test"]["bounce_type"] == "hard"
    assert [t["status"] for t in by_address["slow@dest.test"]["timeline"]] == [
        "deferred",
        "delivered",
    ]


async def test_a_late_outcome_never_overwrites_a_final_one(
    postline: PostlineUnderTest, fake_mx: FakeMX
) -> None:
    sent = await postline.send(to="a@dest.test")
    await postline.wait_for_status(sent["id"], ["delivered"])
    await postline.stop_engine()
    detail = await postline.email(sent["id"])
    recipient_id = await _only_recipient(postline, sent["id"])
    job = _job_for(sent["id"], recipient_id)
    await postline.services.queue.enqueue([job])
    (leased,) = await postline.services.queue.lease("stale-worker", 1, 60)
    late = Outcome(
        status=RecipientStatus.BOUNCED,
        smtp_code=550,
        enhanced_code="5.1.1",
        response="550 5.1.1 late",
        bounce_type=BounceType.HARD,
    )
    recorder = postline.services.engine.recorder
    await recorder.record(
        leased,
        [RecipientResult(recipient_id, late, AttemptScope.RECIPIENT)],
        mx_host="mx.dest.test",
        duration_ms=1,
        retry_at=utcnow(),
    )
    after = await postline.email(sent["id"])
    assert after["status"] == "delivered"
    assert after["recipients"] == detail["recipients"]  # no timeline row, nothing changed
    assert after["events"] == detail["events"]  # no event either
    assert await _count(postline, queue_jobs) == 0  # the stale job was still finished


async def _only_recipient(pl: PostlineUnderTest, email_id: str) -> str:
    statement = select(delivery_attempts.c.recipient_id).where(
        delivery_attempts.c.email_id == email_id
    )
    async with pl.services.db.read() as conn:
        return str((await conn.execute(statement)).scalar_one())


def _job_for(email_id: str, recipient_id: str) -> Job:
    return Job(
        id=new_id("job_"),
        email_id=email_id,
        destination="dest.test",
        recipient_ids=[recipient_id],
        body_ref=email_id,
        due_at=utcnow(),
    )


async def test_a_job_whose_worker_died_is_delivered_after_its_lease_expires(
    postline_factory: Factory, fake_mx: FakeMX
) -> None:
    pl = await postline_factory(engine=False)
    sent = await pl.send(to="a@dest.test")
    (dead,) = await pl.services.queue.lease("worker-that-died", 10, 60)
    async with pl.services.db.write() as conn:  # its lease ran out
        await conn.execute(update(queue_jobs).values(lease_until=utcnow() - timedelta(seconds=1)))
    pl.start_engine()
    detail = await pl.wait_for_status(sent["id"], ["delivered"])
    assert len(fake_mx.received) == 1
    assert detail["recipients"][0]["attempts"] == 1
    # The same job, picked up again and finished: none is left, and the dead worker's
    # lease on it is no longer anything to ack.
    assert await pl.services.queue.depth() == {}
    assert not await pl.services.queue.ack(dead)


async def test_redelivery_skips_recipients_already_final(
    postline: PostlineUnderTest, fake_mx: FakeMX
) -> None:
    sent = await postline.send(to=["a@dest.test"])
    await postline.wait_for_status(sent["id"], ["delivered"])
    recipient_id = await _only_recipient(postline, sent["id"])
    # A crash after recording but before the ack would leave this job behind.
    await postline.services.queue.enqueue([_job_for(sent["id"], recipient_id)])
    deadline = asyncio.get_running_loop().time() + 10
    while await _count(postline, queue_jobs):
        assert asyncio.get_running_loop().time() < deadline, "job was never finished"
        await asyncio.sleep(0.05)
    assert len(fake_mx.received) == 1
    assert await _count(postline, events, type="email.delivered") == 1


async def test_still_deferred_at_max_age_becomes_failed(
    postline_factory: Factory, fake_mx: FakeMX
) -> None:
    clock = MovableClock()
    postline = await postline_factory(clock=clock)
    fake_mx.on_rcpt("stuck@dest.test", "451 4.7.1 greylisted, try later")
    sent = await postline.send(to="stuck@dest.test")
    await postline.wait_for(
        sent["id"], lambda d: d["recipients"][0]["status"] == "deferred", what="a deferral"
    )
    # Six days later (max_age is five): the next attempt gives up.
    clock.offset = timedelta(days=6)
    detail = await postline.wait_for_status(sent["id"], ["failed"])
    (recipient,) = detail["recipients"]
    assert recipient["status"] == "failed"
    assert recipient["smtp_code"] == 451
    assert [t["status"] for t in recipient["timeline"]][-1] == "failed"
    assert detail["events"][-1]["type"] == "email.failed"
    assert await _count(postline, queue_jobs) == 0


@pytest.fixture(params=["embedded", pytest.param("redis", marks=pytest.mark.redis)])
def queue_topology(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The embedded queue (the recorder finishes jobs in its transaction) or Redis (after it)."""
    if request.param == "embedded":
        return {}
    return {
        "database_url": request.getfixturevalue("postgres_url"),
        "queue_url": request.getfixturevalue("redis_url"),
        "queue_prefix": request.getfixturevalue("redis_prefix"),
    }


@pytest.mark.parametrize("finish", ["ack", "retry", "park"])
async def test_a_stale_worker_records_its_outcome_and_leaves_the_new_owners_job_alone(
    postline_factory: Factory,
    queue_topology: dict[str, Any],
    finish: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A worker whose lease went to another while it recorded: its outcome stands (the
    new owner finds the recipient final or deferred), the queue refuses its ack, retry
    or park without touching the job, and the recorder says whose job it lost."""
    pl = await postline_factory(engine=False, **queue_topology)
    accepted = await pl.send(to="late@dest.test")
    queue = pl.services.queue
    (stale,) = await poll(lambda: queue.lease("stale-worker", 1, 0.01), timeout=10, what="job")
    (taken,) = await poll(lambda: queue.lease("new-owner", 1, 60), timeout=10, what="lapse")
    assert taken.id == stale.id
    (recipient_id,) = stale.recipient_ids
    recorder = pl.services.engine.recorder
    caplog.set_level(logging.WARNING, logger="postline.delivery")
    until = utcnow() + timedelta(hours=1)
    if finish == "park":
        wait = Wait(utcnow(), until, f"waiting: next trial at {until}")
        await recorder.park(stale, [recipient_id], wait)
    else:
        status = RecipientStatus.DELIVERED if finish == "ack" else RecipientStatus.DEFERRED
        outcome = Outcome(status=status, smtp_code=250 if finish == "ack" else 451)
        await recorder.record(
            stale,
            [RecipientResult(recipient_id, outcome, AttemptScope.RECIPIENT)],
            mx_host="mx.dest.test",
            duration_ms=5,
            retry_at=until,
        )
    expected = "delivered" if finish == "ack" else "deferred"
    assert (await pl.email(accepted["id"]))["recipients"][0]["status"] == expected
    lost = [r.getMessage() for r in caplog.records if "lease lost" in r.getMessage()]
    assert lost == [
        f"lease lost before recording: 1 of job(s) {stale.id} belong to another worker now"
    ]
    # The job is still the new owner's, as it was: not acked, retried nor parked.
    assert await queue.lease("third-worker", 1, 60) == []
    assert await queue.extend(taken, 60)
    assert await queue.depth() == {"dest.test": 1}
    assert await queue.ack(taken)


@pytest.mark.parametrize("finish", ["ack", "retry"])
async def test_a_live_worker_finishes_its_job_in_the_queue(
    postline_factory: Factory,
    queue_topology: dict[str, Any],
    finish: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The recorder acks a finished job and retries a deferred one, in the queue it has
    (inside its transaction for the embedded queue, after the commit for Redis)."""
    pl = await postline_factory(engine=False, **queue_topology)
    await pl.send(to="someone@dest.test")
    queue = pl.services.queue
    (job,) = await poll(lambda: queue.lease("worker", 1, 60), timeout=10, what="the job")
    caplog.set_level(logging.WARNING, logger="postline.delivery")
    status = RecipientStatus.DELIVERED if finish == "ack" else RecipientStatus.DEFERRED
    retry_at = utcnow() + timedelta(hours=1)
    await pl.services.engine.recorder.record(
        job,
        [RecipientResult(job.recipient_ids[0], Outcome(status=status), AttemptScope.RECIPIENT)],
        mx_host="mx.dest.test",
        duration_ms=5,
        retry_at=retry_at,
    )
    assert not [r for r in caplog.records if "lease lost" in r.getMessage()]
    if finish == "ack":
        assert await queue.depth() == {}
        return
    assert await queue.depth() == {"dest.test": 1}
    assert await queue.in_flight() == {}  # no longer leased
    assert await queue.lease("worker", 1, 60) == []  # due in an hour


async def test_a_batch_with_a_lost_and_a_kept_lease_counts_only_the_lost_one(
    postline_factory: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    """Two outcomes recorded together (one group commit, the embedded queue): the kept
    job is acked, and the warning counts the one job the queue refused."""
    pl = await postline_factory(engine=False)
    queue = pl.services.queue
    await pl.send(to="late@dest.test")
    (stale,) = await poll(lambda: queue.lease("stale-worker", 1, 0.01), timeout=10, what="job")
    (taken,) = await poll(lambda: queue.lease("new-owner", 1, 60), timeout=10, what="lapse")
    await pl.send(to="kept@dest.test")
    (kept,) = await poll(lambda: queue.lease("live-worker", 1, 60), timeout=10, what="job")
    caplog.set_level(logging.WARNING, logger="postline.delivery")
    delivered = Outcome(status=RecipientStatus.DELIVERED, smtp_code=250)
    await asyncio.gather(
        *(
            pl.services.engine.recorder.record(
                job,
                [RecipientResult(job.recipient_ids[0], delivered, AttemptScope.RECIPIENT)],
                mx_host="mx.dest.test",
                duration_ms=5,
                retry_at=utcnow(),
            )
            for job in (stale, kept)
        )
    )
    lost = [r.getMessage() for r in caplog.records if "lease lost" in r.getMessage()]
    assert lost == [
        f"lease lost before recording: 1 of job(s) {stale.id},{kept.id} "
        "belong to another worker now"
    ]
    assert await queue.depth() == {"dest.test": 1}  # the new owner's, still leased
    assert await queue.ack(taken)


async def _rows(pl: PostlineUnderTest, table: Table, email_id: str) -> list[dict[str, Any]]:
    async with pl.services.db.read() as conn:
        result = await conn.execute(select(table).where(table.c.email_id == email_id))
        return [dict(row) for row in result.mappings()]


async def _three_recipients_leased(
    pl: PostlineUnderTest,
) -> tuple[dict[str, Any], tuple[email_store.Recipient, ...], Job]:
    """One email to ok@, later@ and gone@dest.test, accepted (its answer); its recipients in
    that order; its job, leased by "worker"."""
    sent = await pl.send(to=["ok@dest.test", "later@dest.test", "gone@dest.test"])
    async with pl.services.db.read() as conn:
        recipients = {r.address: r for r in await email_store.get_recipients(conn, sent["id"])}
    ok, later, gone = (recipients[f"{n}@dest.test"] for n in ("ok", "later", "gone"))
    queue = pl.services.queue
    (job,) = await poll(lambda: queue.lease("worker", 1, 60), timeout=10, what="the job")
    return sent, (ok, later, gone), job


async def test_one_attempt_writes_each_recipients_row_event_and_retry(
    postline_factory: Factory,
) -> None:
    """Field by field, one attempt of three recipients (delivered, deferred, bounced):
    one attempt id and the attempt's MX, duration and TLS on each timeline row, the
    next attempt only on the deferred one, the events numbered on after those of the
    accept, the deferred one alone pending and retried."""
    pl = await postline_factory(engine=False)
    sent, (ok, later, gone), job = await _three_recipients_leased(pl)
    queue = pl.services.queue
    retry_at = utcnow() + timedelta(hours=1)
    results = [
        (ok, Outcome(status=RecipientStatus.DELIVERED, smtp_code=250, response="250 ok")),
        (later, Outcome(status=RecipientStatus.DEFERRED, smtp_code=451, response="451 later")),
        (gone, Outcome(status=RecipientStatus.BOUNCED, smtp_code=550, response="550 gone")),
    ]
    pending = await pl.services.engine.recorder.record(
        job,
        [RecipientResult(r.id, outcome, AttemptScope.RECIPIENT) for r, outcome in results],
        mx_host="mx.dest.test",
        duration_ms=321,
        retry_at=retry_at,
        tls=TlsInfo(TlsPolicySource.OPPORTUNISTIC, "TLSv1.3"),
    )
    assert pending == [later.id]
    rows = {row["recipient_id"]: row for row in await _rows(pl, delivery_attempts, sent["id"])}
    assert len({row["attempt_id"] for row in rows.values()}) == 1
    for recipient, outcome in results:
        row = rows[recipient.id]
        assert row["attempt_id"].startswith("att_")
        assert (row["attempt"], row["status"], row["scope"]) == (1, outcome.status, "recipient")
        assert (row["mx_host"], row["duration_ms"]) == ("mx.dest.test", 321)
        assert (row["smtp_code"], row["response"]) == (outcome.smtp_code, outcome.response)
        assert (row["tls_policy"], row["tls_version"]) == ("opportunistic", "TLSv1.3")
    async with pl.services.db.read() as conn:
        after = {r.id: r for r in await email_store.get_recipients(conn, sent["id"])}
    assert after[later.id].next_attempt_at == retry_at
    assert after[ok.id].next_attempt_at is None
    assert after[gone.id].next_attempt_at is None
    assert {r.attempts for r in after.values()} == {1}
    moves = sorted(
        (e["sequence"], e["recipient_id"], e["type"])
        for e in await _rows(pl, events, sent["id"])
        if e["type"] != "email.queued"
    )
    assert moves == [
        (4, ok.id, "email.delivered"),
        (5, later.id, "email.deferred"),
        (6, gone.id, "email.bounced"),
    ]
    assert await queue.in_flight() == {}
    assert await queue.depth() == {"dest.test": 1}  # the deferred recipient's, in an hour
    assert await queue.lease("worker", 1, 60) == []


async def test_an_attempt_past_max_age_fails_its_deferral_with_the_last_answer(
    postline_factory: Factory,
) -> None:
    """The deferral of an attempt made after ``max_age`` is recorded as ``failed``,
    keeping everything the MX said, with the count of attempts as its reason."""
    clock = MovableClock()
    pl = await postline_factory(engine=False, clock=clock)
    sent = await pl.send(to="stuck@dest.test")
    queue = pl.services.queue
    (job,) = await poll(lambda: queue.lease("worker", 1, 60), timeout=10, what="the job")
    clock.offset = timedelta(days=6)
    deferral = Outcome(
        status=RecipientStatus.DEFERRED,
        smtp_code=451,
        enhanced_code="4.2.1",
        response="451 4.2.1 mailbox busy",
        bounce_type=BounceType.SOFT,
        bounce_rule="test.busy",
    )
    pending = await pl.services.engine.recorder.record(
        job,
        [RecipientResult(job.recipient_ids[0], deferral, AttemptScope.RECIPIENT)],
        mx_host="mx.dest.test",
        duration_ms=5,
        retry_at=utcnow() + timedelta(hours=1),
    )
    assert pending == []
    (row,) = await _rows(pl, delivery_attempts, sent["id"])
    assert {k: row[k] for k in ("status", "smtp_code", "enhanced_code", "response")} == {
        "status": "failed",
        "smtp_code": 451,
        "enhanced_code": "4.2.1",
        "response": "451 4.2.1 mailbox busy",
    }
    assert (row["bounce_type"], row["bounce_rule"]) == ("soft", "test.busy")
    (failed,) = [e for e in await _rows(pl, events, sent["id"]) if e["type"] == "email.failed"]
    assert failed["payload"]["data"]["reason"] == "expired after 1 attempts"
    assert await queue.depth() == {}


async def test_a_refused_move_leaves_its_event_number_to_the_next_move(
    postline_factory: Factory,
) -> None:
    """A late outcome for a final recipient writes nothing, so the next move of the
    email in the same attempt takes the number it did not use."""
    pl = await postline_factory(engine=False)
    sent = await pl.send(to=["done@dest.test", "open@dest.test"])
    queue = pl.services.queue
    (job,) = await poll(lambda: queue.lease("worker", 1, 60), timeout=10, what="the job")
    done, still = job.recipient_ids
    recorder = pl.services.engine.recorder
    delivered = Outcome(status=RecipientStatus.DELIVERED, smtp_code=250)
    deferred = Outcome(status=RecipientStatus.DEFERRED, smtp_code=451)
    await recorder.record(
        job,
        [
            RecipientResult(done, delivered, AttemptScope.RECIPIENT),
            RecipientResult(still, deferred, AttemptScope.RECIPIENT),
        ],
        mx_host="mx.dest.test",
        duration_ms=5,
        retry_at=utcnow(),
    )
    (again,) = await poll(lambda: queue.lease("worker", 1, 60), timeout=10, what="the retry")
    late = Outcome(status=RecipientStatus.BOUNCED, smtp_code=550, response="550 late")
    pending = await recorder.record(
        again,
        [
            RecipientResult(done, late, AttemptScope.RECIPIENT),
            RecipientResult(still, delivered, AttemptScope.RECIPIENT),
        ],
        mx_host="mx.dest.test",
        duration_ms=5,
        retry_at=utcnow(),
    )
    assert pending == []
    moves = sorted(
        (e["sequence"], e["recipient_id"], e["type"]) for e in await _rows(pl, events, sent["id"])
    )
    assert moves == [
        (1, done, "email.queued"),
        (2, still, "email.queued"),
        (3, done, "email.delivered"),
        (4, still, "email.deferred"),
        (5, still, "email.delivered"),
    ]
    assert await queue.depth() == {}


@pytest.mark.parametrize("how", ["record", "park"])
async def test_a_result_for_a_recipient_of_another_email_is_skipped(
    postline_factory: Factory, how: str
) -> None:
    """A result naming a recipient the job's email does not have changes nothing, and
    the results after it are recorded: for an attempt, and for a park, whose timeline
    row counts no attempt and names no MX."""
    pl = await postline_factory(engine=False)
    other = await pl.send(to="other@dest.test")
    sent = await pl.send(to="mine@dest.test")
    queue = pl.services.queue
    leased = await poll(lambda: queue.lease("worker", 2, 60), timeout=10, what="the jobs")
    by_email = {job.email_id: job for job in leased}
    job = by_email[sent["id"]]
    (foreign,) = by_email[other["id"]].recipient_ids
    (mine,) = job.recipient_ids
    until = utcnow() + timedelta(hours=1)
    recorder = pl.services.engine.recorder
    if how == "park":
        await recorder.park(job, [foreign, mine], Wait(utcnow(), until, "waiting: next trial"))
    else:
        deferred = Outcome(status=RecipientStatus.DEFERRED, smtp_code=451)
        await recorder.record(
            job,
            [RecipientResult(r, deferred, AttemptScope.RECIPIENT) for r in (foreign, mine)],
            mx_host="mx.dest.test",
            duration_ms=5,
            retry_at=until,
        )
    assert [r["status"] for r in (await pl.email(other["id"]))["recipients"]] == ["queued"]
    assert await _rows(pl, delivery_attempts, other["id"]) == []
    async with pl.services.db.read() as conn:
        (recipient,) = await email_store.get_recipients(conn, sent["id"])
    assert (recipient.status, recipient.next_attempt_at) == (RecipientStatus.DEFERRED, until)
    (row,) = await _rows(pl, delivery_attempts, sent["id"])
    assert row["attempt_id"].startswith("att_")
    if how == "park":
        assert recipient.attempts == 0
        assert (row["attempt"], row["scope"], row["mx_host"], row["duration_ms"]) == (
            0,
            "breaker",
            None,
            0,
        )
        assert row["response"] == "waiting: next trial"
    else:
        assert recipient.attempts == 1
        assert (row["attempt"], row["scope"], row["mx_host"]) == (1, "recipient", "mx.dest.test")


async def test_a_recipient_suppressed_at_send_gets_its_event_but_no_attempt(
    postline_factory: Factory,
) -> None:
    """A move decided without the MX (listed after the accept) is recorded beside the
    attempt: its event, but no timeline row and no attempt counted."""
    pl = await postline_factory(engine=False)
    sent = await pl.send(to=["listed@dest.test", "sent@dest.test"])
    queue = pl.services.queue
    (job,) = await poll(lambda: queue.lease("worker", 1, 60), timeout=10, what="the job")
    listed, sent_to = job.recipient_ids
    suppressed = Outcome(status=RecipientStatus.SUPPRESSED, reason="on the suppression list")
    delivered = Outcome(status=RecipientStatus.DELIVERED, smtp_code=250)
    await pl.services.engine.recorder.record(
        job,
        [
            RecipientResult(listed, suppressed, AttemptScope.RECIPIENT, attempted=False),
            RecipientResult(sent_to, delivered, AttemptScope.RECIPIENT),
        ],
        mx_host="mx.dest.test",
        duration_ms=5,
        retry_at=utcnow(),
    )
    rows = await _rows(pl, delivery_attempts, sent["id"])
    assert [row["recipient_id"] for row in rows] == [sent_to]
    async with pl.services.db.read() as conn:
        after = {r.id: r for r in await email_store.get_recipients(conn, sent["id"])}
    assert (after[listed].status, after[listed].attempts) == (RecipientStatus.SUPPRESSED, 0)
    assert (after[sent_to].status, after[sent_to].attempts) == (RecipientStatus.DELIVERED, 1)
    types = {e["recipient_id"]: e["type"] for e in await _rows(pl, events, sent["id"])}
    assert types == {listed: "email.suppressed", sent_to: "email.delivered"}


async def test_a_recipient_another_writer_moved_first_gets_nothing_from_the_batch(
    postline_factory: Factory, postgres_url: str
) -> None:
    """The statement's guard has the last word on PostgreSQL: a writer that moved a
    recipient while the batch waited on its row (committed after the batch read it as
    queued) wins, and the batch writes no timeline row, event or sequence number for it
    and keeps no retry for it; the job's other recipients move as usual.

    Postline's own writers lock the email first, so they never meet the guard here; the
    writer below moves the row alone, as an operator's UPDATE would (mutation testing:
    recording a move the statement refused went unseen)."""
    pl = await postline_factory(engine=False, database_url=postgres_url)
    sent, (ok, later, gone), job = await _three_recipients_leased(pl)
    before = await _rows(pl, events, sent["id"])
    last = max(row["sequence"] for row in before)
    recorder = pl.services.engine.recorder
    results = [
        RecipientResult(ok.id, Outcome(RecipientStatus.DELIVERED, 250), AttemptScope.RECIPIENT),
        RecipientResult(later.id, Outcome(RecipientStatus.DEFERRED, 451), AttemptScope.RECIPIENT),
        RecipientResult(gone.id, Outcome(RecipientStatus.DEFERRED, 451), AttemptScope.RECIPIENT),
    ]
    waiting = text(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )

    async def blocked() -> bool:
        async with pl.services.db.read() as conn:
            return int((await conn.execute(waiting)).scalar_one()) > 0

    async with pl.services.db.write() as conn:
        cancel = email_store.RecipientMove(
            gone.id,
            RecipientStatus.CANCELLED,
            (RecipientStatus.QUEUED,),
            {"updated_at": utcnow(), "attempts": 0},
        )
        assert await email_store.move_recipients(conn, [cancel]) == {gone.id}
        recording = asyncio.create_task(
            recorder.record(job, results, mx_host="mx.dest.test", duration_ms=5, retry_at=utcnow())
        )
        await poll(blocked, timeout=10, what="the batch waiting on the cancelled recipient's row")
    pending = await asyncio.wait_for(recording, 30)
    assert pending == [later.id]
    after = {r.id: r for r in await _recipients_of(pl, sent["id"])}
    assert [after[r.id].status for r in (ok, later, gone)] == [
        RecipientStatus.DELIVERED,
        RecipientStatus.DEFERRED,
        RecipientStatus.CANCELLED,
    ]
    timeline = await _rows(pl, delivery_attempts, sent["id"])
    assert sorted((row["recipient_id"], row["status"]) for row in timeline) == sorted(
        [(ok.id, "delivered"), (later.id, "deferred")]
    )
    new = [row for row in await _rows(pl, events, sent["id"]) if row["sequence"] > last]
    assert sorted((row["sequence"], row["recipient_id"], row["type"]) for row in new) == [
        (last + 1, ok.id, "email.delivered"),
        (last + 2, later.id, "email.deferred"),
    ]


async def _recipients_of(pl: PostlineUnderTest, email_id: str) -> list[email_store.Recipient]:
    async with pl.services.db.read() as conn:
        return await email_store.get_recipients(conn, email_id)


@pytest.mark.parametrize("first", ["deferral", "park"])
async def test_two_attempts_for_one_recipient_in_one_batch_count_two(
    postline_factory: Factory, first: str
) -> None:
    """A stale worker's deferral (or park) and the new owner's delivery of the same job,
    recorded in one group commit: the second sees the first's move, so the recipient has
    as many attempts as were made (a park makes none) and its timeline numbers them.

    Both rows carry the batch's one clock reading: a batch that fails is written again
    item by item, each with its own, and those items alone would pass the rest of this
    test (mutation testing: the first move's attempt count lost from the batch's view
    raised in the second move's plan, and went unseen)."""
    pl = await postline_factory(engine=False)
    sent = await pl.send(to="twice@dest.test")
    queue = pl.services.queue
    (stale,) = await poll(lambda: queue.lease("stale-worker", 1, 0.01), timeout=10, what="job")
    (taken,) = await poll(lambda: queue.lease("new-owner", 1, 60), timeout=10, what="lapse")
    (recipient_id,) = taken.recipient_ids
    deferred = Outcome(status=RecipientStatus.DEFERRED, smtp_code=451)
    delivered = Outcome(status=RecipientStatus.DELIVERED, smtp_code=250)
    recorder = pl.services.engine.recorder

    def attempt(job: Job, outcome: Outcome) -> Any:
        return recorder.record(
            job,
            [RecipientResult(recipient_id, outcome, AttemptScope.RECIPIENT)],
            mx_host="mx.dest.test",
            duration_ms=5,
            retry_at=utcnow(),
        )

    if first == "park":
        until = utcnow() + timedelta(hours=1)
        stale_move = recorder.park(stale, [recipient_id], Wait(utcnow(), until, "waiting"))
    else:
        stale_move = attempt(stale, deferred)
    await asyncio.gather(stale_move, attempt(taken, delivered))
    made = 1 if first == "park" else 2
    detail = await pl.email(sent["id"])
    (recipient,) = detail["recipients"]
    assert (recipient["status"], recipient["attempts"]) == ("delivered", made)
    rows = sorted(await _rows(pl, delivery_attempts, sent["id"]), key=lambda row: row["id"])
    assert [(row["attempt"], row["status"]) for row in rows] == [
        (made - 1, "deferred"),
        (made, "delivered"),
    ]
    assert rows[0]["created_at"] == rows[1]["created_at"]  # one batch, one transaction


async def test_each_recorded_outcome_is_logged_and_counted_by_its_status(
    postline_factory: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    """One INFO line per recorded outcome, whole (the log privacy test only looks for its
    start), and ``postline_recipient_outcomes_total`` counted by each outcome's status:
    mutation testing showed an id, a status or the destination could be logged as None."""
    pl = await postline_factory(engine=False)
    sent, (ok, later, gone), job = await _three_recipients_leased(pl)
    results = [
        (ok, RecipientStatus.DELIVERED),
        (later, RecipientStatus.DEFERRED),
        (gone, RecipientStatus.BOUNCED),
    ]
    caplog.set_level(logging.INFO, logger="postline.delivery")
    await pl.services.engine.recorder.record(
        job,
        [RecipientResult(r.id, Outcome(status=s), AttemptScope.RECIPIENT) for r, s in results],
        mx_host="mx.dest.test",
        duration_ms=5,
        retry_at=utcnow() + timedelta(hours=1),
    )
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.name == "postline.delivery" and r.getMessage().startswith("outcome ")
    ]
    assert sorted(lines) == sorted(
        f"outcome email_id={sent['id']} recipient_id={r.id} status={s} destination=dest.test"
        for r, s in results
    )
    response = await pl.client.get("/metrics")
    assert response.status_code == 200, response.text
    samples = response.text.splitlines()
    for status in ("delivered", "deferred", "bounced"):
        assert f'postline_recipient_outcomes_total{{status="{status}"}} 1.0' in samples, status
