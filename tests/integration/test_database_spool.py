"""The database spool's own promises: database failures become spool errors, on both stores.

A full disk must reach the API as SpoolFull (507, retry later) and any other
failure as SpoolError, never as SpoolMissing: a worker that thinks a body is
gone fails its recipients for good.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import event, text

from postline.config import normalize_database_url
from postline.spool import SpoolError, SpoolFull, SpoolMissing
from postline.spool.database import DatabaseSpool
from postline.store.db import Database
from postline.store.migrate import upgrade_async

POISON = "em_poison"


@pytest_asyncio.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    url = normalize_database_url(database_url)
    await upgrade_async(url)
    database = Database(url)
    try:
        yield database
    finally:
        await database.close()


async def _refuse_poison_on_postgresql(db: Database, errcode: str) -> None:
    """Make PostgreSQL raise ``errcode`` when the poison body is written, as a full disk would."""
    async with db.write() as conn:
        await conn.execute(
            text(
                "CREATE FUNCTION refuse_poison() RETURNS trigger AS $$ BEGIN "
                f"IF NEW.ref = '{POISON}' THEN "
                f"RAISE EXCEPTION 'refused' USING ERRCODE = '{errcode}'; END IF; "
                "RETURN NEW; END $$ LANGUAGE plpgsql"
            )
        )
        await conn.execute(
            text(
                "CREATE TRIGGER refuse_poison BEFORE INSERT ON spool_bodies "
                "FOR EACH ROW EXECUTE FUNCTION refuse_poison()"
            )
        )


def _cap_sqlite_file(db: Database) -> None:
    """No page beyond the current size: the next big write fails with SQLITE_FULL."""

    @event.listens_for(db.engine.sync_engine, "connect")
    def _cap(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA max_page_count = 1")  # raised to the current size
        cursor.close()


async def test_a_full_database_is_spool_full_and_stores_nothing(
    db: Database, store_backend: str
) -> None:
    spool = DatabaseSpool(db)
    if store_backend == "sqlite":
        _cap_sqlite_file(db)
        batch = [("em_small", b"x"), (POISON, b"x" * 4_000_000), ("em_after", b"y")]
    else:
        await _refuse_poison_on_postgresql(db, "53100")  # disk_full
        batch = [("em_small", b"x"), (POISON, b"x"), ("em_after", b"y")]
    with pytest.raises(SpoolFull):
        await spool.put_many(batch)
    for ref, _ in batch:
        with pytest.raises(SpoolMissing):
            await spool.get(ref)


async def test_other_write_failures_are_spool_errors(postgres_url: str) -> None:
    url = normalize_database_url(postgres_url)
    await upgrade_async(url)
    db = Database(url)
    try:
        await _refuse_poison_on_postgresql(db, "42501")  # insufficient_privilege
        spool = DatabaseSpool(db)
        with pytest.raises(SpoolError) as caught:
            await spool.put_many([("em_first", b"x"), (POISON, b"x")])
        assert type(caught.value) is SpoolError
        assert "refused" in str(caught.value)
        with pytest.raises(SpoolMissing):
            await spool.get("em_first")
    finally:
        await db.close()


async def test_a_broken_store_is_never_reported_as_a_missing_body(db: Database) -> None:
    spool = DatabaseSpool(db)
    await spool.put("em_there", b"body")
    async with db.write() as conn:
        await conn.execute(text("DROP TABLE spool_bodies"))
    with pytest.raises(SpoolError) as caught:
        await spool.get("em_there")
    assert not isinstance(caught.value, SpoolMissing)
    with pytest.raises(SpoolError) as caught:
        await spool.put("em_new", b"x")
    assert type(caught.value) is SpoolError
    with pytest.raises(SpoolError) as caught:
        await spool.delete("em_there")
    assert type(caught.value) is SpoolError


async def test_bodies_written_in_a_store_transaction_last_only_if_it_commits(
    db: Database,
) -> None:
    """The acceptor writes bodies in its own transaction: one commit for bodies and rows,
    and nothing of a transaction that is rolled back."""
    spool = DatabaseSpool(db)
    assert spool.shares_store
    with pytest.raises(RuntimeError, match="rolled back"):
        async with db.write() as conn:
            await spool.put_many([("em_undone", b"x")], conn)
            raise RuntimeError("rolled back")
    with pytest.raises(SpoolMissing):
        await spool.get("em_undone")
    async with db.write() as conn:
        await spool.put_many([("em_kept", b"kept")], conn)
    assert await spool.get("em_kept") == b"kept"
