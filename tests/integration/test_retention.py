"""Retention, run on every supported spool and store: bodies leave the spool once their
email is final (or after POSTLINE_BODY_RETENTION_SECONDS), GET /v1/emails/{id}/content
serves them until then, and emails past POSTLINE_RETENTION_DAYS are purged whole.

Postline runs in process with its engine delivering to the fake MX, so emails reach
their states for real; the sweeps are then called with a chosen ``now`` (the clock is
injected), as housekeeping would call them, except the one test that runs housekeeping
itself at a short interval.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import func, select

from postline.app import build_spool
from postline.housekeeping import housekeeping
from postline.keys import create_key
from postline.orphans import clean_orphans
from postline.retention import RetentionReport, free_bodies, purge_emails, retention_pass
from postline.spool import SpoolMissing
from postline.store import webhooks as webhook_store
from postline.store.db import Database
from postline.store.schema import (
    delivery_attempts,
    email_recipients,
    events,
    sent_emails,
    webhook_attempts,
    webhook_deliveries,
)
from postline.store.types import utcnow
from tests.harness.fake_mx import FakeMX
from tests.harness.polling import poll
from tests.harness.postline import Factory, PostlineUnderTest

DEFER = "451 4.7.1 please try again later"


@pytest.fixture(
    params=["file-sqlite", "file-postgresql", "database-postgresql"],
)
def topology(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Where bodies and rows live. The database spool needs PostgreSQL (config.py)."""
    spool, store = str(request.param).split("-")
    overrides: dict[str, Any] = {}
    if store == "postgresql":
        overrides["database_url"] = request.getfixturevalue("postgres_url")
    if spool == "database":
        overrides["spool_url"] = "database"
    return overrides


@pytest_asyncio.fixture
async def pl(postline_factory: Factory, topology: dict[str, Any]) -> PostlineUnderTest:
    return await postline_factory(**topology)


async def body_kept(pl: PostlineUnderTest, email_id: str) -> bool:
    try:
        await pl.services.spool.get(email_id)
    except SpoolMissing:
        return False
    return True


async def final_at(pl: PostlineUnderTest, email_id: str) -> datetime:
    """When the email became final: its ``updated_at``, what retention counts from."""
    async with pl.services.db.read() as conn:
        moment = (
            await conn.execute(select(sent_emails.c.updated_at).where(sent_emails.c.id == email_id))
        ).scalar_one()
    assert isinstance(moment, datetime)
    return moment


async def rows_of(pl: PostlineUnderTest, email_ids: list[str]) -> dict[str, int]:
    """How many rows of each table still belong to these emails."""
    counts: dict[str, int] = {}
    async with pl.services.db.read() as conn:
        for name, column in (
            ("sent_emails", sent_emails.c.id),
            ("email_recipients", email_recipients.c.email_id),
            ("delivery_attempts", delivery_attempts.c.email_id),
            ("events", events.c.email_id),
        ):
            statement = select(func.count()).where(column.in_(email_ids))
            counts[name] = int((await conn.execute(statement)).scalar_one())
        email_events = select(events.c.id).where(events.c.email_id.in_(email_ids))
        deliveries = select(webhook_deliveries.c.id).where(
            webhook_deliveries.c.event_id.in_(email_events)
        )
        counts["webhook_deliveries"] = int(
            (
                await conn.execute(
                    select(func.count()).where(webhook_deliveries.c.id.in_(deliveries))
                )
            ).scalar_one()
        )
        counts["webhook_attempts"] = int(
            (
                await conn.execute(
                    select(func.count()).where(webhook_attempts.c.delivery_id.in_(deliveries))
                )
            ).scalar_one()
        )
    return counts


async def all_dispatched(pl: PostlineUnderTest) -> bool:
    async with pl.services.db.read() as conn:
        statement = select(func.count()).where(events.c.dispatched_at.is_(None))
        return int((await conn.execute(statement)).scalar_one()) == 0


async def test_body_freed_once_final_in_one_pass(pl: PostlineUnderTest) -> None:
    # Two destinations, so two jobs share the body: it lives until neither needs it.
    sent = await pl.send(to=["a@dest.test", "b@other.test"])
    email_id = sent["id"]
    await pl.wait_until_final(email_id)
    assert await body_kept(pl, email_id)  # nothing frees it but housekeeping

    freed = await free_bodies(pl.services.db, pl.services.spool, utcnow(), 0)

    assert freed == 1
    assert not await body_kept(pl, email_id)
    async with pl.services.db.read() as conn:
        row = await conn.execute(
            select(sent_emails.c.body_purged_at).where(sent_emails.c.id == email_id)
        )
        assert row.scalar_one() is not None
    # A second pass finds nothing left to do.
    assert await free_bodies(pl.services.db, pl.services.spool, utcnow(), 0) == 0


async def test_body_kept_while_any_recipient_waits(pl: PostlineUnderTest, fake_mx: FakeMX) -> None:
    fake_mx.on_rcpt("later@other.test", DEFER)
    deferred = (await pl.send(to=["now@dest.test", "later@other.test"]))["id"]
    later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    scheduled = (await pl.send(to=["sched@dest.test"], scheduled_at=later))["id"]
    await pl.wait_for(
        deferred,
        lambda d: {r["status"] for r in d["recipients"]} == {"delivered", "deferred"},
        what="one recipient delivered, the other deferred",
    )
    assert (await pl.email(scheduled))["status"] == "scheduled"

    # Even judged a year later: a waiting recipient needs the body.
    next_year = utcnow() + timedelta(days=365)
    assert await free_bodies(pl.services.db, pl.services.spool, next_year, 0) == 0
    assert await body_kept(pl, deferred)
    assert await body_kept(pl, scheduled)

    # Cancelling the scheduled email makes it final: now its body goes, the other stays.
    response = await pl.client.post(f"/v1/emails/{scheduled}/cancel", headers=pl.auth())
    assert response.status_code == 200, response.text
    assert await free_bodies(pl.services.db, pl.services.spool, utcnow(), 0) == 1
    assert not await body_kept(pl, scheduled)
    assert await body_kept(pl, deferred)


async def test_body_retention_keeps_it_until_it_elapses(
    postline_factory: Factory, topology: dict[str, Any]
) -> None:
    pl = await postline_factory(body_retention_seconds=600, **topology)
    email_id = (await pl.send(to=["a@dest.test"]))["id"]
    await pl.wait_until_final(email_id)
    final = await final_at(pl, email_id)
    stored = await pl.services.spool.get(email_id)
    db, spool = pl.services.db, pl.services.spool

    assert await free_bodies(db, spool, final + timedelta(seconds=599), 600) == 0
    response = await pl.client.get(f"/v1/emails/{email_id}/content", headers=pl.auth())
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "message/rfc822"
    assert response.content == stored
    assert b"Hello from Postline" in response.content
    # Orphan cleanup, even at max_age 0, leaves a body the retention keeps.
    cleaned = await clean_orphans(
        db, pl.services.queue, spool, final + timedelta(seconds=599), 0, body_retention_seconds=600
    )
    assert cleaned.deleted == 0
    assert await body_kept(pl, email_id)

    assert await free_bodies(db, spool, final + timedelta(seconds=600), 600) == 1
    response = await pl.client.get(f"/v1/emails/{email_id}/content", headers=pl.auth())
    assert response.status_code == 410, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 410
    assert problem["title"] == "Gone"


async def test_content_while_pending_and_not_for_others(postline_factory: Factory) -> None:
    pl = await postline_factory(engine=False, domains=("example.test", "elsewhere.test"))
    email_id = (await pl.send(to=["a@dest.test"]))["id"]  # no engine: stays queued

    response = await pl.client.get(f"/v1/emails/{email_id}/content", headers=pl.auth())
    assert response.status_code == 200
    assert response.content == await pl.services.spool.get(email_id)

    other = await create_key(pl.services.db, "elsewhere", domain="elsewhere.test")
    for key, path in (
        (other.key, f"/v1/emails/{email_id}/content"),
        (None, "/v1/emails/em_doesnotexist/content"),
    ):
        response = await pl.client.get(path, headers=pl.auth(key))
        assert response.status_code == 404, response.text
        assert response.headers["content-type"] == "application/problem+json"


async def test_content_of_a_body_lost_is_gone(postline_factory: Factory) -> None:
    pl = await postline_factory()
    email_id = (await pl.send(to=["a@dest.test"]))["id"]
    await pl.wait_until_final(email_id)
    # Another process freed it a moment ago and has not marked it yet.
    await pl.services.spool.delete(email_id)
    response = await pl.client.get(f"/v1/emails/{email_id}/content", headers=pl.auth())
    assert response.status_code == 410


async def test_purge_removes_old_final_emails_in_batches(
    pl: PostlineUnderTest, fake_mx: FakeMX
) -> None:
    fake_mx.on_rcpt("later@other.test", DEFER)
    final = [(await pl.send(to=[f"r{i}@dest.test"]))["id"] for i in range(7)]
    waiting = (await pl.send(to=["later@other.test"]))["id"]
    scheduled = (
        await pl.send(
            to=["s@dest.test"], scheduled_at=(datetime.now(UTC) + timedelta(days=29)).isoformat()
        )
    )["id"]
    for email_id in final:
        await pl.wait_until_final(email_id)
    await pl.wait_for_status(waiting, ["deferred"])
    await poll(lambda: all_dispatched(pl), timeout=15, what="every event fanned out")
    await pl.stop_engine()
    assert (await rows_of(pl, final))["delivery_attempts"] == 7
    db, spool = pl.services.db, pl.services.spool
    newest = max([await final_at(pl, e) for e in final])

    # 29 days on, nothing is old enough yet.
    assert await purge_emails(db, spool, newest + timedelta(days=29), 30) == 0

    later = newest + timedelta(days=30, seconds=1)
    assert await purge_emails(db, spool, later, 30, batch=3, rounds=1) == 3
    assert (await rows_of(pl, final))["sent_emails"] == 4
    assert await purge_emails(db, spool, later, 30, batch=3) == 4  # two more rounds

    assert await rows_of(pl, final) == dict.fromkeys(
        [
            "sent_emails",
            "email_recipients",
            "delivery_attempts",
            "events",
            "webhook_deliveries",
            "webhook_attempts",
        ],
        0,
    )
    # Bodies went with the rows (none was freed before: no housekeeping ran).
    assert [e for e in final if await body_kept(pl, e)] == []
    # Mail still waiting is never purged, however old.
    assert await purge_emails(db, spool, later + timedelta(days=365), 30) == 0
    for email_id in (waiting, scheduled):
        counts = await rows_of(pl, [email_id])
        assert counts["sent_emails"] == counts["email_recipients"] == 1
        assert counts["events"] >= 1
        assert await body_kept(pl, email_id)


async def test_purge_waits_for_webhooks_still_owed(pl: PostlineUnderTest) -> None:
    email_id = (await pl.send(to=["a@dest.test"]))["id"]
    await pl.wait_until_final(email_id)
    await poll(lambda: all_dispatched(pl), timeout=15, what="every event fanned out")
    await pl.stop_engine()
    db, spool = pl.services.db, pl.services.spool
    now = utcnow()
    async with db.write() as conn:
        for webhook_id, enabled in (("wh_enabled", True), ("wh_disabled", False)):
            await webhook_store.insert_webhook(
                conn,
                {
                    "id": webhook_id,
                    "url": "http://127.0.0.1:9/hook",
                    "events": ["*"],
                    "secret": "whsec_test",
                    "enabled": enabled,
                    "created_at": now,
                    "updated_at": now,
                },
            )
        event_id = (
            await conn.execute(select(events.c.id).where(events.c.email_id == email_id).limit(1))
        ).scalar_one()
        await webhook_store.insert_deliveries(
            conn,
            [
                {
                    "id": f"whd_{webhook_id}",
                    "event_id": event_id,
                    "webhook_id": webhook_id,
                    "status": "pending",
                    "attempts": 1,
                    "next_attempt_at": now,
                    "created_at": now,
                    "updated_at": now,
                }
                for webhook_id in ("wh_enabled", "wh_disabled")
            ],
        )
    later = await final_at(pl, email_id) + timedelta(days=31)

    # Retried to an enabled endpoint: the receiver is still owed it.
    assert await purge_emails(db, spool, later, 30) == 0
    async with db.write() as conn:
        await conn.execute(
            webhook_deliveries.update()
            .where(webhook_deliveries.c.id == "whd_wh_enabled")
            .values(status="delivered")
        )
    # Delivered, or waiting only for a disabled endpoint: purged, deliveries with it.
    assert await purge_emails(db, spool, later, 30) == 1
    assert (await rows_of(pl, [email_id]))["events"] == 0
    async with db.read() as conn:
        left = await conn.execute(select(func.count()).select_from(webhook_deliveries))
        assert left.scalar_one() == 0


async def test_two_processes_sweep_at_once(pl: PostlineUnderTest) -> None:
    ids = [(await pl.send(to=[f"r{i}@dest.test"]))["id"] for i in range(12)]
    for email_id in ids:
        await pl.wait_until_final(email_id)
    await poll(lambda: all_dispatched(pl), timeout=15, what="every event fanned out")
    await pl.stop_engine()
    # A second worker process: its own connections to the same store and spool.
    other_db = Database(pl.settings.database_url)
    other_spool = build_spool(pl.settings, other_db)
    try:
        workers = ((pl.services.db, pl.services.spool), (other_db, other_spool))

        async def both_at(now: datetime) -> list[RetentionReport]:
            return await asyncio.gather(
                *(
                    retention_pass(db, spool, now, body_retention_seconds=0, retention_days=30)
                    for db, spool in workers
                )
            )

        now = max([await final_at(pl, e) for e in ids]) + timedelta(seconds=1)
        reports = await both_at(now)
        # Each body is marked freed by exactly one of them.
        assert sum(r.bodies_freed for r in reports) == 12
        assert [e for e in ids if await body_kept(pl, e)] == []

        reports = await both_at(now + timedelta(days=31))
        assert sum(r.emails_purged for r in reports) == 12
        assert (await rows_of(pl, ids))["sent_emails"] == 0
    finally:
        await other_db.close()


async def test_housekeeping_empties_the_spool(
    postline_factory: Factory, topology: dict[str, Any]
) -> None:
    """The wiring, as a worker runs it: no call by hand, only housekeeping's own passes."""
    pl = await postline_factory(housekeeping_interval=0.2, **topology)
    stop = asyncio.Event()
    chores = asyncio.create_task(housekeeping(pl.services, stop))
    try:
        ids = [(await pl.send(to=[f"r{i}@dest.test", "x@other.test"]))["id"] for i in range(3)]
        for email_id in ids:
            await pl.wait_until_final(email_id)

        async def spool_empty() -> bool:
            return not await pl.services.spool.refs_older_than(utcnow() + timedelta(days=1))

        await poll(spool_empty, timeout=15, what="the spool to empty")
    finally:
        stop.set()
        await asyncio.wait_for(chores, timeout=30)  # housekeeping that crashed fails the test
