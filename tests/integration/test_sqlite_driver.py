"""Postline's aiosqlite adapter: one trip to the database thread per statement, and
everything SQLAlchemy reads off a cursor as the stock adapter gives it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError

from postline.store.db import Database


@pytest_asyncio.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'driver.db'}")
    async with database.write() as conn:
        await conn.execute(
            text("CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE, n INT)")
        )
    try:
        yield database
    finally:
        await database.close()


async def test_a_statement_is_one_trip_to_the_database_thread(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stock adapter makes four (cursor, execute, fetch, close); each waits for the loop."""
    trips: list[Any] = []
    real = aiosqlite.Connection._execute

    async def counted(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        trips.append(fn)
        return await real(self, fn, *args, **kwargs)  # type: ignore[no-untyped-call]

    async with db.read() as conn:
        await conn.execute(text("SELECT 0"))  # the read's BEGIN goes with its first statement
        monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
        rows = (await conn.execute(text("SELECT 1 UNION ALL SELECT 2"))).all()
        monkeypatch.undo()
    assert [tuple(r) for r in rows] == [(1,), (2,)]
    assert len(trips) == 1


async def test_what_sqlalchemy_reads_off_the_cursor_is_there(db: Database) -> None:
    async with db.write() as conn:
        inserted = await conn.execute(
            text("INSERT INTO t (name, n) VALUES (:name, :n)"), {"name": "a", "n": 1}
        )
        assert inserted.lastrowid == 1
        assert not inserted.returns_rows
        many = await conn.execute(
            text("INSERT INTO t (name, n) VALUES (:name, :n)"),
            [{"name": "b", "n": 2}, {"name": "c", "n": 3}],
        )
        assert many.rowcount == 2
        updated = await conn.execute(text("UPDATE t SET n = n + 10 WHERE n >= 2"))
        assert updated.rowcount == 2
        returned = await conn.execute(
            text("UPDATE t SET n = 0 WHERE name IN ('a', 'c') RETURNING name")
        )
        assert sorted(returned.scalars()) == ["a", "c"]
    async with db.read() as conn:
        result = await conn.execute(text("SELECT name, n FROM t ORDER BY id"))
        assert list(result.keys()) == ["name", "n"]
        assert [tuple(r) for r in result] == [("a", 0), ("b", 12), ("c", 0)]
        assert (await conn.execute(text("SELECT n FROM t WHERE name = 'b'"))).scalar_one() == 12
        partial = await conn.execute(text("SELECT name FROM t ORDER BY id"))
        assert partial.fetchmany(2) == [("a",), ("b",)]
        assert partial.fetchall() == [("c",)]


async def test_errors_come_as_sqlalchemys_and_the_transaction_goes_on(db: Database) -> None:
    async with db.write() as conn:
        await conn.execute(text("INSERT INTO t (name, n) VALUES ('x', 1)"))
        with pytest.raises(IntegrityError):
            await conn.execute(text("INSERT INTO t (name, n) VALUES ('x', 2)"))
        with pytest.raises(OperationalError, match="no such table"):
            await conn.execute(text("SELECT * FROM missing"))
        await conn.execute(text("INSERT INTO t (name, n) VALUES ('y', 3)"))
    async with db.read() as conn:
        names = (await conn.execute(text("SELECT name FROM t ORDER BY id"))).scalars().all()
    assert names == ["x", "y"]
