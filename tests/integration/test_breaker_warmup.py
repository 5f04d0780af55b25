"""Breakers warmed from the delivery_attempts table on both stores, so that a restart
neither hammers a dead server nor keeps a recovered one shut."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest_asyncio
from sqlalchemy import insert

from postline.config import normalize_database_url
from postline.delivery.breaker import Breakers, BreakerState
from postline.store.attempts import AttemptRow, recent_attempts
from postline.store.breakers import record_command
from postline.store.db import Database
from postline.store.migrate import upgrade_async
from postline.store.schema import delivery_attempts, domains, email_recipients, sent_emails
from postline.store.types import utcnow
from tests.harness.postline import Factory

# Whole seconds: both stores keep them exactly, so times compare equal after a round trip.
NOW = datetime.now(UTC).replace(microsecond=0)
OPEN = timedelta(minutes=5)
RECIPIENTS = ("a", "b", "c", "d", "e")


@pytest_asyncio.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    url = normalize_database_url(database_url)
    await upgrade_async(url)
    database = Database(url)
    await _history_domain(database, "example.test")
    try:
        yield database
    finally:
        await database.close()


class History:
    """Writes delivery_attempts rows (and the email and recipients they belong to)."""

    def __init__(self, db: Database, now: datetime = NOW) -> None:
        self.db = db
        #: What ``minutes_ago`` counts back from.
        self.now = now
        self.emails = 0
        self.attempts = 0

    async def email(self, destination: str) -> tuple[str, list[str]]:
        self.emails += 1
        email_id = f"em_{self.emails}"
        recipient_ids = [f"rcpt_{self.emails}_{name}" for name in RECIPIENTS]
        async with self.db.write() as conn:
            await conn.execute(
                insert(sent_emails).values(
                    id=email_id,
                    domain_id="dom_1",
                    source="api",
                    message_id=f"<{email_id}@example.test>",
                    from_header="s@example.test",
                    from_address="s@example.test",
                    envelope_from="s@example.test",
                    subject="hi",
                    size=100,
                    body_ref=email_id,
                    tags={},
                    status="queued",
                    created_at=NOW - timedelta(hours=3),
                    updated_at=NOW,
                )
            )
            await conn.execute(
                insert(email_recipients),
                [
                    {
                        "id": recipient_id,
                        "email_id": email_id,
                        "position": position,
                        "address": f"{name}@{destination}",
                        "destination": destination,
                        "kind": "to",
                        "status": "deferred",
                        "attempts": 0,
                        "created_at": NOW - timedelta(hours=3),
                        "updated_at": NOW,
                    }
                    for position, (name, recipient_id) in enumerate(
                        zip(RECIPIENTS, recipient_ids, strict=True)
                    )
                ],
            )
        return email_id, recipient_ids

    async def attempt(
        self,
        email: tuple[str, list[str]],
        minutes_ago: float,
        scope: str,
        status: str,
        recipients: int = 1,
        destination: str = "dest.test",
    ) -> None:
        """One SMTP transaction (or one breaker deferral): one row per recipient."""
        self.attempts += 1
        email_id, recipient_ids = email
        at = self.now - timedelta(minutes=minutes_ago)
        rows: list[dict[str, Any]] = [
            {
                "email_id": email_id,
                "recipient_id": recipient_id,
                "attempt_id": f"att_{self.attempts}",
                "destination": destination,
                "attempt": 1,
                "status": status,
                "scope": scope,
                "response": f"{scope} {status}",
                "duration_ms": 5,
                "created_at": at,
            }
            for recipient_id in recipient_ids[:recipients]
        ]
        async with self.db.write() as conn:
            await conn.execute(insert(delivery_attempts), rows)

    async def failures(self, count: int, first_minutes_ago: float, recipients: int = 3) -> None:
        """Retries of one message, a minute apart: each is its own attempt."""
        email = await self.email("dest.test")
        for n in range(count):
            await self.attempt(email, first_minutes_ago - n, "transaction", "deferred", recipients)


async def warmed(db: Database) -> tuple[Breakers, list[AttemptRow]]:
    async with db.read() as conn:
        rows = await recent_attempts(conn, NOW - timedelta(hours=1))
    breakers = Breakers(clock=lambda: NOW)
    breakers.warm_up(rows)
    return breakers, rows


async def test_recent_attempts_reads_the_last_hour_in_order(db: Database) -> None:
    history = History(db)
    email = await history.email("Dest.test")
    await history.attempt(email, 90, "transaction", "deferred")  # too old
    await history.attempt(email, 30, "recipient", "bounced", recipients=2)
    await history.attempt(email, 45, "transaction", "delivered", destination="Dest.test")
    _, rows = await warmed(db)
    assert [(r.attempt_id, r.scope, r.status, r.created_at) for r in rows] == [
        ("att_3", "transaction", "delivered", NOW - timedelta(minutes=45)),
        ("att_2", "recipient", "bounced", NOW - timedelta(minutes=30)),
        ("att_2", "recipient", "bounced", NOW - timedelta(minutes=30)),
    ]
    assert rows[0].destination == "Dest.test"
    assert rows[0].response == "transaction delivered"


async def test_five_failed_attempts_in_the_hour_open_until_the_last_plus_five_minutes(
    db: Database,
) -> None:
    history = History(db)
    await history.attempt(await history.email("dest.test"), 40, "transaction", "delivered")
    await history.failures(5, first_minutes_ago=6)
    breakers, _ = await warmed(db)
    view = breakers.view("dest.test")
    assert view.state is BreakerState.OPEN
    assert view.until == NOW - timedelta(minutes=2) + OPEN
    assert view.consecutive_failures == 5
    assert not breakers.allow("dest.test")
    assert breakers.allow("other.test")


async def test_one_failed_transaction_for_five_recipients_does_not_open(db: Database) -> None:
    history = History(db)
    await history.failures(1, first_minutes_ago=1, recipients=5)
    breakers, rows = await warmed(db)
    assert len(rows) == 5
    view = breakers.view("dest.test")
    assert view.state is BreakerState.CLOSED
    assert view.consecutive_failures == 1


async def test_failures_then_a_recent_success_stay_closed(db: Database) -> None:
    history = History(db)
    await history.failures(4, first_minutes_ago=20)
    email = await history.email("dest.test")
    await history.attempt(email, 10, "recipient", "bounced", recipients=5)  # 550 user unknown
    await history.failures(4, first_minutes_ago=5)
    breakers, _ = await warmed(db)
    view = breakers.view("dest.test")
    assert view.state is BreakerState.CLOSED
    assert view.consecutive_failures == 4


async def test_a_breaker_whose_last_failure_was_ten_minutes_ago_is_not_open(
    db: Database,
) -> None:
    history = History(db)
    await history.failures(5, first_minutes_ago=14)
    # Deferred without connecting while it was open: never counted, never extending.
    email = await history.email("dest.test")
    for minutes_ago in range(9, 0, -1):
        await history.attempt(email, minutes_ago, "breaker", "deferred", recipients=5)
    breakers, _ = await warmed(db)
    assert breakers.view("dest.test").state is BreakerState.HALF_OPEN
    assert breakers.allow("dest.test")


async def test_local_refusals_and_waits_are_neither_success_nor_failure(db: Database) -> None:
    history = History(db)
    email = await history.email("dest.test")
    for minutes_ago in range(12, 6, -1):  # six messages over the server's SIZE
        await history.attempt(email, minutes_ago, "local", "bounced", recipients=2)
    breakers, _ = await warmed(db)
    assert breakers.views() == []  # not five failures: a restart opens nothing
    await history.failures(4, first_minutes_ago=5)
    await history.attempt(email, 1.5, "local", "bounced")  # no success either: no reset
    await history.attempt(email, 1.2, "breaker", "deferred", recipients=5)
    await history.failures(1, first_minutes_ago=1)
    breakers, _ = await warmed(db)
    view = breakers.view("dest.test")
    assert view.state is BreakerState.OPEN
    assert view.consecutive_failures == 5
    assert breakers.waiting("dest.test").opened_at == NOW - timedelta(minutes=1)


async def test_an_operators_close_outlasts_a_restart(postline_factory: Factory) -> None:
    """Warm-up counts only the failures after the operator's last close of a destination:
    a worker restarted after the close must not reopen the breaker from older ones."""
    pl = await postline_factory(engine=False)
    await _history_domain(pl.services.db, "history.test")  # example.test is Postline's
    now = utcnow().replace(microsecond=0)
    history = History(pl.services.db, now=now)
    await history.failures(5, first_minutes_ago=8)  # 8..4 minutes ago: open until 1 from now
    engine = pl.services.engine
    before, _ = await engine.load_breakers()
    assert before.view("dest.test").state is BreakerState.OPEN
    async with pl.services.db.write() as conn:
        await record_command(conn, "dest.test", "close", now - timedelta(minutes=3))
    await history.failures(2, first_minutes_ago=2)  # after the close: these count
    after, _ = await engine.load_breakers()
    view = after.view("dest.test")
    assert (view.state, view.consecutive_failures) == (BreakerState.CLOSED, 2)


async def _history_domain(db: Database, name: str) -> None:
    """The sending domain ``History`` writes its emails under (id ``dom_1``)."""
    async with db.write() as conn:
        await conn.execute(
            insert(domains).values(
                id="dom_1",
                name=name,
                dkim_selector="s1",
                verified=True,
                bounce_notifications=True,
                created_at=NOW,
                updated_at=NOW,
            )
        )
