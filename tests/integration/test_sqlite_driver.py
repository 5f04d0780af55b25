"""Postline's aiosqlite adapter: one trip to the database thread per statement, and
everything SQLAlchemy reads off a cursor as the stock adapter gives it."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
import pytest_asyncio
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, text
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


#: The table ``db`` creates, for Core INSERTs (a ``text`` INSERT is never deferred).
T = Table(
    "t",
    MetaData(),
    Column("id", Integer, primary_key=True),
    Column("name", String),
    Column("n", Integer),
)


async def names(db: Database) -> list[str]:
    async with db.read() as conn:
        return list((await conn.execute(text("SELECT name FROM t ORDER BY id"))).scalars())


def count_trips(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """From now on, every function run in a connection's database thread, in order."""
    trips: list[Any] = []
    real = aiosqlite.Connection._execute

    async def counted(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        trips.append(fn)
        return await real(self, fn, *args, **kwargs)  # type: ignore[no-untyped-call]

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    return trips


async def test_a_statement_is_one_trip_to_the_database_thread(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stock adapter makes four (cursor, execute, fetch, close); each waits for the loop."""
    async with db.read() as conn:
        await conn.execute(text("SELECT 0"))  # the read's BEGIN goes with its first statement
        trips = count_trips(monkeypatch)
        rows = (await conn.execute(text("SELECT 1 UNION ALL SELECT 2"))).all()
        monkeypatch.undo()
    assert [tuple(r) for r in rows] == [(1,), (2,)]
    assert len(trips) == 1


async def test_begin_goes_with_the_first_statement_and_a_transaction_without_one_costs_none(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A one-statement read or write is two trips (the statement, then ROLLBACK or
    COMMIT), not three: BEGIN makes no trip of its own."""
    async with db.read() as conn:
        await conn.execute(text("SELECT 0"))  # the pool's first connection, opened
    trips = count_trips(monkeypatch)
    async with db.read() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar_one() == 0
    assert len(trips) == 2
    trips.clear()
    async with db.write() as conn:
        await conn.execute(text("INSERT INTO t (name, n) VALUES ('a', 1)"))
    assert len(trips) == 2, trips
    trips.clear()
    async with db.write():
        pass
    async with db.read():
        pass
    assert trips == []
    async with db.read() as conn:
        assert (await conn.execute(text("SELECT n FROM t"))).scalar_one() == 1


async def test_a_lookup_is_one_trip_and_reads_each_statement_at_its_own_moment(
    db: Database, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``Database.lookup`` runs outside a transaction: no ROLLBACK to send afterwards,
    and no snapshot held between its statements (as ``read`` on PostgreSQL)."""
    async with db.lookup() as conn:
        await conn.execute(text("SELECT 0"))  # the pool's first connection, opened
    trips = count_trips(monkeypatch)
    async with db.lookup() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar_one() == 0
    assert len(trips) == 1, trips
    monkeypatch.undo()
    other = sqlite3.connect(tmp_path / "driver.db", timeout=0, isolation_level=None)
    try:
        async with db.lookup() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar_one() == 0
            other.execute("INSERT INTO t (name, n) VALUES ('elsewhere', 1)")
            assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar_one() == 1
    finally:
        other.close()
    async with db.read() as conn:  # the same pooled connections: a read still keeps one
        assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar_one() == 1


async def test_a_read_block_keeps_one_snapshot_and_a_write_holds_the_lock(
    db: Database, tmp_path: Path
) -> None:
    """The kept BEGIN is run: DEFERRED for a read (later statements see what the first
    saw), IMMEDIATE for a write (the write lock is taken with the first statement)."""
    other = sqlite3.connect(tmp_path / "driver.db", timeout=0, isolation_level=None)
    try:
        async with db.read() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar_one() == 0
            other.execute("INSERT INTO t (name, n) VALUES ('elsewhere', 1)")
            assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar_one() == 0
        async with db.write() as conn:
            await conn.execute(text("SELECT 1"))  # reads nothing, yet takes the write lock
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
    finally:
        other.close()


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


async def test_a_write_cancelled_during_its_first_statement_leaves_no_lock_behind(
    db: Database, tmp_path: Path
) -> None:
    """The statement (with its BEGIN IMMEDIATE) still runs in the database thread after
    its caller was cancelled; the ROLLBACK queued behind it must run too, or the pooled
    connection would keep SQLite's write lock for ever."""
    entered, release = threading.Event(), threading.Event()

    def slow() -> int:
        entered.set()
        release.wait(10)
        return 1

    async with db.write() as conn:
        raw = await conn.get_raw_connection()
        await raw.driver_connection.create_function("slow", 0, slow)  # type: ignore[union-attr]

    async def write() -> None:
        async with db.write() as conn:
            await conn.execute(text("INSERT INTO t (name, n) VALUES ('late', slow())"))

    task = asyncio.create_task(write())
    assert await asyncio.to_thread(entered.wait, 10)
    task.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    other = sqlite3.connect(tmp_path / "driver.db", timeout=0, isolation_level=None)
    try:
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            try:
                other.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError:
                assert asyncio.get_running_loop().time() < deadline, "the write lock was kept"
                await asyncio.sleep(0.02)
        other.execute("ROLLBACK")
    finally:
        other.close()
    async with db.read() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar_one() == 0


async def test_a_write_that_defers_inserts_sends_them_with_its_commit_in_one_trip(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``defer_inserts``: the accept path's group commit holds SQLite's one write lock,
    which other processes wait for, for one trip instead of one per statement."""
    async with db.write() as conn:
        await conn.execute(text("SELECT 0"))  # the pool's first connection, opened
    trips = count_trips(monkeypatch)
    async with db.write(defer_inserts=True) as conn:
        await conn.execute(insert(T), [{"name": "a", "n": 1}, {"name": "b", "n": 2}])
        await conn.execute(insert(T).values(name="c", n=3))
        assert trips == []
    assert len(trips) == 1, trips
    trips.clear()
    async with db.write(defer_inserts=True) as conn:
        await conn.execute(insert(T).values(name="d", n=4))
        # A statement that answers goes with what was kept, and sees it.
        assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar_one() == 4
        returned = await conn.execute(insert(T).values(name="e", n=5).returning(T.c.name))
        assert returned.scalar_one() == "e"  # an INSERT that returns rows answers at once
    assert len(trips) == 3, trips
    trips.clear()
    async with db.write() as conn:  # without the option, an INSERT is a trip of its own
        await conn.execute(insert(T).values(name="f", n=6))
        assert len(trips) == 1
    monkeypatch.undo()
    assert await names(db) == ["a", "b", "c", "d", "e", "f"]


async def write_taken(db: Database) -> None:
    """The row named ``taken``: a deferred INSERT of that name fails (UNIQUE)."""
    async with db.write() as conn:
        await conn.execute(insert(T).values(name="taken", n=1))


async def test_a_deferred_insert_that_fails_fails_the_write_and_leaves_nothing(
    db: Database, tmp_path: Path
) -> None:
    """Its error comes from the COMMIT it went with; the transaction is rolled back
    (nothing of it kept, the write lock let go), and the pooled connection keeps
    nothing of it for the next write."""
    await write_taken(db)
    with pytest.raises(IntegrityError, match="UNIQUE"):
        async with db.write(defer_inserts=True) as conn:
            await conn.execute(insert(T).values(name="fresh", n=2))
            await conn.execute(insert(T).values(name="taken", n=3))
    with pytest.raises(RuntimeError):
        async with db.write(defer_inserts=True) as conn:
            await conn.execute(insert(T).values(name="never sent", n=4))
            raise RuntimeError("the caller changed its mind")
    other = sqlite3.connect(tmp_path / "driver.db", timeout=0, isolation_level=None)
    try:
        other.execute("INSERT INTO t (name, n) VALUES ('elsewhere', 5)")  # no lock left held
    finally:
        other.close()
    async with db.write(defer_inserts=True) as conn:
        await conn.execute(insert(T).values(name="next", n=6))
    assert await names(db) == ["taken", "elsewhere", "next"]


async def test_a_write_whose_deferred_insert_failed_never_commits(db: Database) -> None:
    """The INSERT's error is raised by the next statement; a caller that takes it for
    that statement's own and goes on still cannot commit without the INSERT's rows."""
    await write_taken(db)
    with pytest.raises(OperationalError, match="deferred INSERT of this transaction failed"):
        async with db.write(defer_inserts=True) as conn:
            await conn.execute(insert(T).values(name="kept for later", n=2))
            await conn.execute(insert(T).values(name="taken", n=3))
            with pytest.raises(IntegrityError):  # raised by the UPDATE: it went with it
                await conn.execute(text("UPDATE t SET n = n + 10"))
            await conn.execute(text("UPDATE t SET n = n + 100"))
    async with db.read() as conn:
        rows = (await conn.execute(text("SELECT name, n FROM t"))).all()
    assert [tuple(r) for r in rows] == [("taken", 1)]
    async with db.write(defer_inserts=True) as conn:  # the pooled connection is clean
        await conn.execute(insert(T).values(name="next", n=4))
    assert await names(db) == ["taken", "next"]
