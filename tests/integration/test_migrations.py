"""Alembic migrations run up and down on SQLite and PostgreSQL and match the schema."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import insert, inspect, select, text
from sqlalchemy.engine import Connection

from postline.config import normalize_database_url
from postline.store import schema
from postline.store.db import Database
from postline.store.migrate import downgrade, upgrade
from postline.store.schema import metadata


async def _tables(url: str) -> set[str]:
    db = Database(url)
    try:
        async with db.read() as conn:
            return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
    finally:
        await db.close()


async def _diff(url: str) -> list[Any]:
    def compare(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))

    db = Database(url)
    try:
        async with db.read() as conn:
            return await conn.run_sync(compare)
    finally:
        await db.close()


async def test_up_down_up_and_matches_schema(database_url: str) -> None:
    url = normalize_database_url(database_url)
    await asyncio.to_thread(upgrade, url)
    expected = set(metadata.tables) | {"alembic_version"}
    assert await _tables(url) == expected
    assert await _diff(url) == [], "migrations and store/schema.py have drifted apart"
    await asyncio.to_thread(downgrade, url)
    assert await _tables(url) <= {"alembic_version"}
    await asyncio.to_thread(upgrade, url)
    assert await _tables(url) == expected


async def test_sqlite_runs_in_wal_mode(tmp_path: object) -> None:
    url = normalize_database_url(f"sqlite:///{tmp_path}/wal.db")
    await asyncio.to_thread(upgrade, url)
    db = Database(url)
    try:
        async with db.read() as conn:
            mode = (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar()
            timeout = (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar()
            sync = (await conn.exec_driver_sql("PRAGMA synchronous")).scalar()
    finally:
        await db.close()
    assert mode == "wal"
    assert timeout and int(timeout) >= 1000
    assert sync == 2  # FULL: a commit survives power loss, as the 202 promises


async def test_0011_reads_deferred_and_moves_a_deferral_class_to_its_timeline(
    database_url: str,
) -> None:
    """Rows written before 0011: an email waiting for a retry read "sending" and its
    deferred recipient carried ``bounce_type: soft``. After the upgrade the email
    reads "deferred", only the bounced recipient keeps a bounce type, and the class
    of the deferral is in its latest timeline row; the downgrade puts both back."""
    url = normalize_database_url(database_url)
    await asyncio.to_thread(upgrade, url, "0010")
    now = datetime.now(UTC)
    email = {
        "domain_id": "dom_1",
        "source": "api",
        "from_header": "a@example.test",
        "from_address": "a@example.test",
        "envelope_from": "a@example.test",
        "subject": "s",
        "size": 1,
        "tags": {},
        "created_at": now,
        "updated_at": now,
    }
    recipient = {
        "destination": "dest.test",
        "kind": "to",
        "position": 0,
        "attempts": 1,
        "created_at": now,
        "updated_at": now,
    }
    attempt = {
        "destination": "dest.test",
        "attempt": 1,
        "scope": "recipient",
        "duration_ms": 0,
        "created_at": now,
    }
    db = Database(url)
    try:
        async with db.write() as conn:
            await conn.execute(
                insert(schema.domains).values(
                    id="dom_1",
                    name="example.test",
                    dkim_selector="s",
                    created_at=now,
                    updated_at=now,
                    verified=False,
                    bounce_notifications=True,
                )
            )
            for email_id, status in (("em_waiting", "sending"), ("em_other", "sending")):
                await conn.execute(
                    insert(schema.sent_emails).values(
                        id=email_id,
                        message_id=f"<{email_id}@x>",
                        body_ref=email_id,
                        status=status,
                        **email,
                    )
                )
            rows = [
                ("rcp_1", "em_waiting", "deferred", "soft"),
                ("rcp_2", "em_waiting", "bounced", "hard"),
                ("rcp_3", "em_other", "delivered", None),
                ("rcp_4", "em_other", "queued", None),
            ]
            for recipient_id, email_id, status, bounce_type in rows:
                await conn.execute(
                    insert(schema.email_recipients).values(
                        id=recipient_id,
                        email_id=email_id,
                        address=f"{recipient_id}@dest.test",
                        status=status,
                        bounce_type=bounce_type,
                        **recipient,
                    )
                )
                await conn.execute(
                    insert(schema.delivery_attempts).values(
                        email_id=email_id,
                        recipient_id=recipient_id,
                        attempt_id="att_1",
                        status=status,
                        **attempt,
                    )
                )
        await asyncio.to_thread(upgrade, url)
        async with db.read() as conn:
            statuses = dict(
                (
                    await conn.execute(select(schema.sent_emails.c.id, schema.sent_emails.c.status))
                ).all()
            )
            on_recipients = dict(
                (
                    await conn.execute(
                        select(schema.email_recipients.c.id, schema.email_recipients.c.bounce_type)
                    )
                ).all()
            )
            on_timeline = dict(
                (
                    await conn.execute(
                        select(
                            schema.delivery_attempts.c.recipient_id,
                            schema.delivery_attempts.c.bounce_type,
                        )
                    )
                ).all()
            )
        assert statuses == {"em_waiting": "deferred", "em_other": "sending"}
        assert on_recipients == {"rcp_1": None, "rcp_2": "hard", "rcp_3": None, "rcp_4": None}
        assert on_timeline == {"rcp_1": "soft", "rcp_2": "hard", "rcp_3": None, "rcp_4": None}
        await asyncio.to_thread(downgrade, url, "0010")
        async with db.read() as conn:
            statuses = dict((await conn.execute(text("SELECT id, status FROM sent_emails"))).all())
            on_recipients = dict(
                (await conn.execute(text("SELECT id, bounce_type FROM email_recipients"))).all()
            )
        assert statuses == {"em_waiting": "sending", "em_other": "sending"}
        assert on_recipients == {"rcp_1": "soft", "rcp_2": "hard", "rcp_3": None, "rcp_4": None}
    finally:
        await db.close()
