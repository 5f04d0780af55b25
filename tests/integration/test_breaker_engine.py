"""Circuit breakers in the engine: open on transaction failures, defer without connecting."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from postline.delivery.breaker import BreakerPolicy, Breakers, BreakerState
from postline.delivery.record import RecipientResult, Wait
from postline.model import AttemptScope, RecipientStatus
from postline.outcomes import Outcome
from postline.queue import Job
from postline.store.schema import delivery_attempts, email_recipients, events
from postline.store.types import utcnow
from tests.harness import FakeDNS, FakeMX
from tests.harness.clock import MovableClock
from tests.harness.polling import poll
from tests.harness.postline import TEST_SECRET_KEY, Factory, PostlineUnderTest


async def _destination(pl: PostlineUnderTest, domain: str) -> dict[str, Any]:
    response = await pl.client.get("/v1/destinations", headers=pl.auth())
    assert response.status_code == 200
    found: dict[str, Any] = next(d for d in response.json()["data"] if d["domain"] == domain)
    return found


async def test_five_failed_transactions_open_the_breaker_then_jobs_wait_without_connecting(
    postline_factory: Factory, fake_dns: FakeDNS
) -> None:
    fake_dns.add_mx("dead.test", (10, "mx.dead.test"))
    fake_dns.add_a("mx.dead.test", "127.0.0.9")  # nothing listens: connection refused
    pl = await postline_factory()
    sent = await pl.send(to="user@dead.test")
    detail = await pl.wait_for(
        sent["id"],
        lambda d: any(
            "waiting: circuit breaker" in (t["response"] or "")
            for t in d["recipients"][0]["timeline"]
        ),
        what="a wait behind the open breaker",
    )
    timeline = detail["recipients"][0]["timeline"]
    refused = [t for t in timeline if "circuit breaker" not in (t["response"] or "")]
    assert len(refused) == 5  # five real attempts, then the breaker held the job
    assert detail["recipients"][0]["status"] == "deferred"
    assert detail["recipients"][0]["attempts"] == 5  # the wait counted nothing
    destination = await _destination(pl, "dead.test")
    assert destination["breaker"] == "open"
    assert destination["consecutive_failures"] == 5
    assert "SMTPConnectError" in destination["last_error"]

    # A restart warms the breaker from the recorded attempts (fresh breakers): still open.
    await pl.services.engine.warm_up()
    assert pl.services.engine.breakers.view("dead.test").state is BreakerState.OPEN

    # ... and so does `postline queue status`, from another process.
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTLINE_")}
    env["POSTLINE_DATA_DIR"] = str(pl.settings.data_dir)
    env["POSTLINE_SECRET_KEY"] = TEST_SECRET_KEY
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "postline"),
        "queue",
        "status",
        env=env | {"COLUMNS": "200"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, stderr.decode()
    line = next(x for x in stdout.decode().splitlines() if "dead.test" in x)
    assert "open until" in line


async def test_recipient_rejections_never_open_a_breaker(
    postline: PostlineUnderTest, fake_mx: FakeMX
) -> None:
    for i in range(6):
        fake_mx.on_rcpt(f"nobody{i}@dest.test", "550 5.1.1 no such user")
    for i in range(6):
        sent = await postline.send(to=f"nobody{i}@dest.test")
        await postline.wait_for_status(sent["id"], ["bounced"])
    assert postline.services.engine.breakers.view("dest.test").state is BreakerState.CLOSED


async def test_operator_opens_and_closes_a_breaker(
    postline: PostlineUnderTest, fake_mx: FakeMX
) -> None:
    opened = await postline.client.post(
        "/v1/destinations/dest.test/breaker", json={"state": "open"}, headers=postline.auth()
    )
    assert opened.status_code == 200 and opened.json()["breaker"] == "open"
    sent = await postline.send(to="held@dest.test")
    await postline.wait_for(
        sent["id"],
        lambda d: d["recipients"][0]["status"] == "deferred",
        what="a deferral by the forced-open breaker",
    )
    assert fake_mx.connections == 0
    closed = await postline.client.post(
        "/v1/destinations/dest.test/breaker", json={"state": "closed"}, headers=postline.auth()
    )
    assert closed.json()["breaker"] == "closed"
    scoped = await postline.client.post(
        "/v1/api-keys", json={"name": "s", "domain": "example.test"}, headers=postline.auth()
    )
    forbidden = await postline.client.post(
        "/v1/destinations/dest.test/breaker",
        json={"state": "open"},
        headers=postline.auth(scoped.json()["key"]),
    )
    assert forbidden.status_code == 403


async def test_local_refusals_are_neither_success_nor_failure_live_or_after_a_restart(
    postline_factory: Factory, fake_mx: FakeMX, fake_dns: FakeDNS
) -> None:
    """Six messages over the server's SIZE: live they neither reset the failures before
    them nor count; a restart, warmed from what was recorded, agrees."""
    small = FakeMX("127.0.0.7", fake_mx.port, hostname="mx.small.test")
    small.size_limit = 2000
    await small.start()
    try:
        fake_dns.add_mx("small.test", (10, "mx.small.test"))
        fake_dns.add_a("mx.small.test", "127.0.0.7")
        pl = await postline_factory()
        engine = pl.services.engine
        await poll(_running(pl), timeout=10, what="the engine warmed up")
        for _ in range(3):
            engine.breakers.failure("small.test", "421 4.3.2 earlier trouble")
        for i in range(6):
            sent = await pl.send(to=f"user{i}@small.test", text="x" * 5000)
            detail = await pl.wait_for_status(sent["id"], ["bounced"])
            assert detail["recipients"][0]["enhanced_code"] == "5.3.4"
        assert small.received == []
        view = engine.breakers.view("small.test")
        assert (view.state, view.consecutive_failures) == (BreakerState.CLOSED, 3)
        restarted, _ = await engine.load_breakers()
        assert restarted.views() == []  # six refusals are not six failures
    finally:
        await small.stop()


def _running(pl: PostlineUnderTest) -> Any:
    async def check() -> bool:
        return pl.services.engine.running

    return check


# -- waits behind an open breaker cost nothing ------------------------------------------------

EMAILS = 200


async def _attempt_rows(pl: PostlineUnderTest) -> list[Any]:
    c = delivery_attempts.c
    async with pl.services.db.read() as conn:
        statement = select(c.recipient_id, c.attempt_id, c.scope, c.status, c.response)
        return list(await conn.execute(statement.where(c.destination == "dest.test")))


async def _deferred_events(pl: PostlineUnderTest) -> Counter[str]:
    async with pl.services.db.read() as conn:
        rows = await conn.execute(
            select(events.c.recipient_id).where(events.c.type == "email.deferred")
        )
        return Counter(row.recipient_id for row in rows)


async def _attempts_counted(pl: PostlineUnderTest) -> dict[str, int]:
    c = email_recipients.c
    async with pl.services.db.read() as conn:
        return {row.id: row.attempts for row in await conn.execute(select(c.id, c.attempts))}


async def test_a_blackholed_destination_parks_its_mail_until_the_breaker_closes(
    postline_factory: Factory, fake_mx: FakeMX
) -> None:
    """200 emails to a destination that refuses every transaction: the breaker's threshold
    of real attempts, then waits that count nothing; all 200 go once it closes."""
    # One connection at a time: the breaker opens after exactly its threshold of attempts
    # (with more, the transactions already in flight when it opens fail too).
    clock = MovableClock()
    policy = BreakerPolicy()
    pl = await postline_factory(
        engine=False,
        destination_connections=1,
        rate_limit_per_second=0,
        breakers=Breakers(policy, clock),
    )
    fake_mx.on_greeting("421 4.3.2 service shutting down")  # every transaction fails
    sent = [await pl.send(to=f"user{i}@dest.test") for i in range(EMAILS)]
    pl.start_engine()

    async def every_recipient_waits() -> list[Any] | None:
        rows = await _attempt_rows(pl)
        waiting = {r.recipient_id for r in rows if r.scope == "breaker"}
        return rows if len(waiting) == EMAILS else None

    rows = await poll(every_recipient_waits, timeout=120, what="every recipient parked")
    real = {r.attempt_id for r in rows if r.scope != "breaker"}
    assert len(real) == policy.failure_threshold
    assert fake_mx.connections == policy.failure_threshold
    waits = Counter(r.recipient_id for r in rows if r.scope == "breaker")
    assert set(waits.values()) == {1}  # one row per recipient for this opening
    assert all(
        r.response.startswith("waiting: circuit breaker for dest.test, next trial at ")
        for r in rows
        if r.scope == "breaker"
    )
    # The waits counted no attempt: only the five that were tried have one.
    assert sorted(Counter((await _attempts_counted(pl)).values()).items()) == [
        (0, EMAILS - policy.failure_threshold),
        (1, policy.failure_threshold),
    ]
    # One email.deferred per recipient for the wait, and one per real attempt.
    tried = Counter(r.recipient_id for r in rows if r.scope != "breaker")
    assert await _deferred_events(pl) == waits + tried
    # Parked, not retried: the queue holds them all, none leased, nothing more is tried.
    assert await pl.services.queue.in_flight() == {}
    assert await pl.services.queue.depth() == {"dest.test": EMAILS}
    assert len(await _attempt_rows(pl)) == len(rows)

    # The destination recovers; the open period ends on the breaker's clock, and the
    # next email to the destination is its first trial.
    fake_mx.clear()
    clock.offset += timedelta(seconds=policy.open_seconds)
    trigger = await pl.send(to="trigger@dest.test")
    started = time.monotonic()
    await fake_mx.wait_for_messages(EMAILS + 1, timeout=120)
    print(f"\n{EMAILS} parked emails delivered {time.monotonic() - started:.1f}s after recovery")
    assert pl.services.engine.breakers.view("dest.test").state is BreakerState.CLOSED
    for email in [*sent, trigger]:
        await pl.wait_for_status(email["id"], ["delivered"], timeout=60)
    rows = await _attempt_rows(pl)
    failed = {r.attempt_id for r in rows if r.scope != "breaker" and r.status != "delivered"}
    assert len(failed) == policy.failure_threshold
    assert Counter(r.recipient_id for r in rows if r.scope == "breaker") == waits


async def test_parked_jobs_come_back_when_the_next_trial_is_due(
    postline_factory: Factory, fake_mx: FakeMX
) -> None:
    """Without any release, a parked job is due again at the end of the open period."""
    # Open long enough that a loaded machine stops the engine before the trial is due: a
    # trial against the MX still refusing would add a failure and a wait to the timeline.
    policy = BreakerPolicy(failure_threshold=1, open_seconds=5, half_open_trials=1, close_after=1)
    pl = await postline_factory(engine=False, destination_connections=1, breakers=Breakers(policy))
    fake_mx.on_greeting("421 4.3.2 service shutting down")
    first = await pl.send(to="first@dest.test")
    pl.start_engine()
    await pl.wait_for(
        first["id"],
        lambda d: "waiting: circuit breaker" in (d["recipients"][0]["response"] or ""),
        what="the job parked",
    )
    # The MX recovers before the trial, however slow the machine: no worker runs between
    # the park and the recovery. The restarted one warms its breaker up from the store.
    await pl.stop_engine()
    fake_mx.clear()
    pl.start_engine()
    detail = await pl.wait_for_status(first["id"], ["delivered"], timeout=30)
    assert [t["status"] for t in detail["recipients"][0]["timeline"]] == [
        "deferred",  # the failure that opened the breaker
        "deferred",  # the wait
        "delivered",  # the trial, at the end of the open period
    ]
    assert detail["recipients"][0]["attempts"] == 2


async def test_a_park_tells_each_recipient_once_per_opening_and_never_expires_it(
    postline_factory: Factory,
) -> None:
    """The recorder's side of a park, on the store: one row and one email.deferred per
    recipient per opening, no attempt counted, no expiry however old the email."""
    clock = MovableClock()
    pl = await postline_factory(engine=False, clock=clock)
    accepted = await pl.send(to=["a@dest.test", "b@dest.test"])
    recorder = pl.services.engine.recorder
    clock.offset = timedelta(days=6)  # past max_age
    opened = utcnow()

    async def park(since: datetime) -> Job:
        job: Job = (await poll(_lease(pl), timeout=10, what="the email's job"))[0]
        until = utcnow() + timedelta(hours=1)
        ids = list(job.recipient_ids)
        await recorder.park(job, ids, Wait(since, until, f"waiting: next trial at {until}"))
        assert await pl.services.queue.lease("test", 10, 60) == []  # parked for an hour
        assert await pl.services.queue.release_parked("dest.test") == 1
        return job

    first = await park(opened)
    again = await park(opened)  # the same opening: told already
    assert again.attempt == first.attempt == 0
    detail = await pl.email(accepted["id"])
    for recipient in detail["recipients"]:
        assert recipient["status"] == "deferred"
        assert recipient["attempts"] == 0
        assert [t["response"][:19] for t in recipient["timeline"]] == ["waiting: next trial"]
    types = Counter(e["type"] for e in detail["events"])
    assert types["email.deferred"] == 2
    async with pl.services.db.read() as conn:  # one park's two events numbered apart
        numbers = await conn.execute(
            select(events.c.sequence).where(events.c.email_id == accepted["id"])
        )
        assert sorted(numbers.scalars()) == [1, 2, 3, 4]
    await park(utcnow() + timedelta(days=6))  # a new opening, on the recorder's clock
    detail = await pl.email(accepted["id"])
    assert [len(r["timeline"]) for r in detail["recipients"]] == [2, 2]
    assert Counter(e["type"] for e in detail["events"])["email.deferred"] == 4
    assert {r["status"] for r in detail["recipients"]} == {"deferred"}


def _lease(pl: PostlineUnderTest) -> Any:
    async def lease() -> list[Job]:
        return await pl.services.queue.lease("test", 10, 60)

    return lease


async def test_a_park_tells_a_recipient_not_told_yet_after_one_told_already(
    postline_factory: Factory,
) -> None:
    """Parked twice in one opening, first for one recipient, then for both: the one
    told already is left as it is, and the other still gets its row and event."""
    pl = await postline_factory(engine=False)
    accepted = await pl.send(to=["a@dest.test", "b@dest.test"])
    recorder = pl.services.engine.recorder
    opened = utcnow()
    job: Job = (await poll(_lease(pl), timeout=10, what="the email's job"))[0]
    first, second = job.recipient_ids
    until = utcnow() + timedelta(hours=1)
    await recorder.park(job, [first], Wait(opened, until, "waiting: next trial"))
    assert await pl.services.queue.release_parked("dest.test") == 1
    job = (await poll(_lease(pl), timeout=10, what="the email's job"))[0]
    await recorder.park(job, [first, second], Wait(opened, until, "waiting: next trial"))
    detail = await pl.email(accepted["id"])
    assert [len(r["timeline"]) for r in detail["recipients"]] == [1, 1]
    assert {r["status"] for r in detail["recipients"]} == {"deferred"}
    assert Counter(e["type"] for e in detail["events"])["email.deferred"] == 2
    assert await pl.services.queue.release_parked("dest.test") == 1  # parked, not acked


async def test_a_park_records_a_skipped_and_a_refused_recipient_apart_from_the_waiting_one(
    postline_factory: Factory,
) -> None:
    """One park with a recipient suppressed at send (its event, no timeline row), one
    already final (refused: nothing written, its event number left unused) and one to
    wait: the last still gets its row and event, numbered right after the first's."""
    pl = await postline_factory(engine=False)
    accepted = await pl.send(to=["listed@dest.test", "done@dest.test", "wait@dest.test"])
    job: Job = (await poll(_lease(pl), timeout=10, what="the email's job"))[0]
    listed, done, waiting = job.recipient_ids
    async with pl.services.db.write() as conn:  # delivered by an earlier attempt
        await conn.execute(
            update(email_recipients).where(email_recipients.c.id == done).values(status="delivered")
        )
    suppressed = Outcome(status=RecipientStatus.SUPPRESSED, reason="on the suppression list")
    skipped = [RecipientResult(listed, suppressed, AttemptScope.RECIPIENT, attempted=False)]
    until = utcnow() + timedelta(hours=1)
    wait = Wait(utcnow(), until, "waiting: next trial")
    await pl.services.engine.recorder.park(job, [done, waiting], wait, skipped)
    detail = await pl.email(accepted["id"])
    assert [(r["address"], r["status"], len(r["timeline"])) for r in detail["recipients"]] == [
        ("listed@dest.test", "suppressed", 0),
        ("done@dest.test", "delivered", 0),
        ("wait@dest.test", "deferred", 1),
    ]
    assert detail["status"] == "deferred"
    async with pl.services.db.read() as conn:
        moves = await conn.execute(
            select(events.c.sequence, events.c.recipient_id, events.c.type)
            .where(events.c.email_id == accepted["id"])
            .where(events.c.sequence > 3)
        )
        assert sorted(moves.all()) == [
            (4, listed, "email.suppressed"),
            (5, waiting, "email.deferred"),
        ]
    assert await pl.services.queue.release_parked("dest.test") == 1


async def test_the_engines_leases_give_a_destination_its_breaker_refuses_its_turns_only(
    postline_factory: Factory,
) -> None:
    """Jobs of a destination whose breaker is open are leased only to be parked: a
    backlog of them must not take the slots the rest of the mail leaves (it held 90%
    of them and slowed the rest by 88%). Both of the engine's leases, its own and the
    recorder's refill, tell the queue which destinations to hold back."""
    pl = await postline_factory(engine=False)
    engine = pl.services.engine
    for _ in range(12):
        await pl.send(to="someone@held.test")
    await pl.send(to="someone@open.test")
    engine.breakers.force_open("held.test")

    async def refill(limit: int) -> list[Job]:
        async with pl.services.db.write() as conn:
            return await engine.lease_in(conn, limit)

    for lease in (engine.lease, refill):
        leased = await lease(10)
        counts = Counter(job.destination for job in leased)
        # Each destination's turn (5 of 10 slots), and no more: 9 held.test without it.
        assert counts == {"held.test": 5, "open.test": 1}, (lease, counts)
        for job in leased:
            await pl.services.queue.release(job)
