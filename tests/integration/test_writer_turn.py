"""The lock file beside a SQLite database: whose turn it is to write, across processes.

Another process stands for the other half of ``postline serve`` here: a small Python
holding the lock file (or, as an urgent writer waiting, the ``-wanted`` file) until
told to let go.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import text

from postline.store.db import Database
from postline.store.writer_turn import WriterTurn
from tests.harness.lockfiles import free_within, hold, holding


@pytest_asyncio.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'turn.db'}")
    async with database.write() as conn:
        await conn.execute(text("CREATE TABLE t (n INT)"))
    try:
        yield database
    finally:
        await database.close()


async def _insert(db: Database, n: int, *, urgent: bool = False) -> None:
    async with db.write(urgent=urgent) as conn:
        await conn.execute(text("INSERT INTO t (n) VALUES (:n)"), {"n": n})


@pytest.mark.parametrize(
    ("held", "shared"),
    [
        ("turn.db-writer", False),  # another process writes
        # Another process's urgent writer (an accept) waits for the lock: a write that is
        # not urgent (delivery, webhooks) lets it go first, though the lock itself is free.
        ("turn.db-writer-wanted", True),
    ],
)
async def test_a_write_waits_for_the_other_process_and_goes_on_when_it_lets_go(
    db: Database, tmp_path: Path, held: str, shared: bool
) -> None:
    async with holding(tmp_path / held, shared=shared) as holder:
        writing = asyncio.create_task(_insert(db, 1))
        done, _ = await asyncio.wait({writing}, timeout=0.5)
        assert not done, f"the write went ahead while another process held {held}"
        await holder.let_go()
        await asyncio.wait_for(writing, 10)
    async with db.read() as conn:
        assert (await conn.execute(text("SELECT n FROM t"))).scalars().all() == [1]
    assert await free_within(tmp_path / "turn.db-writer")
    # A writer that waited for an urgent one looked with an exclusive lock on the wanted
    # file: kept, no urgent writer of another process could say it waits any more.
    assert await free_within(tmp_path / "turn.db-writer-wanted")


async def test_a_writer_that_stops_waiting_leaves_the_lock_free(
    db: Database, tmp_path: Path
) -> None:
    """Cancelled while its thread waits for the lock: when the lock comes to that
    thread it is let go, so the other process and the next write get it."""
    holder = await hold(tmp_path / "turn.db-writer")
    writing = asyncio.create_task(_insert(db, 1))
    done, _ = await asyncio.wait({writing}, timeout=0.2)
    assert not done
    writing.cancel()
    await asyncio.gather(writing, return_exceptions=True)
    await holder.let_go()
    assert await free_within(tmp_path / "turn.db-writer")
    await asyncio.wait_for(_insert(db, 2), 10)
    async with db.read() as conn:
        assert (await conn.execute(text("SELECT n FROM t"))).scalars().all() == [2]


async def test_a_lock_file_held_too_long_is_left_to_sqlites_own_locking(tmp_path: Path) -> None:
    """Past ``wait_seconds`` the block runs without the lock file (SQLite's busy
    handler decides); the thread still waiting lets the lock go when it gets it."""
    path = tmp_path / "t.db-writer"
    turn = WriterTurn(str(path), wait_seconds=0.2)
    holder = await hold(path)
    ran = False
    async with asyncio.timeout(10):
        async with turn.held():
            ran = True
    assert ran
    await holder.let_go()
    assert await free_within(path)
    async with turn.held():  # and it is taken as usual afterwards
        assert not await free_within(path, 0.1)
    turn.close()


async def test_an_urgent_writer_says_it_waits_until_it_has_the_lock_and_never_waits_for_another(
    db: Database, tmp_path: Path
) -> None:
    """Two urgent writers both go in their turn; and while one waits for the lock it
    says so, and no longer once it has it."""
    wanted = tmp_path / "turn.db-writer-wanted"
    async with holding(wanted, shared=True):
        await asyncio.wait_for(_insert(db, 1, urgent=True), 10)

    inside = asyncio.Event()
    leave = asyncio.Event()

    async def write() -> None:
        async with db.write(urgent=True) as conn:
            inside.set()
            await conn.execute(text("INSERT INTO t (n) VALUES (2)"))
            await leave.wait()

    async with holding(tmp_path / "turn.db-writer") as holder:
        writing = asyncio.create_task(write())
        await asyncio.sleep(0)  # the write starts: it waits for the holder
        assert not await free_within(wanted, 0.5), "an urgent writer waiting did not say so"
        await holder.let_go()
        await asyncio.wait_for(inside.wait(), 10)
        assert await free_within(wanted, 0.1), "an urgent writer said so once it had the lock"
        leave.set()
        await asyncio.wait_for(writing, 10)
    async with db.read() as conn:
        assert (await conn.execute(text("SELECT n FROM t ORDER BY n"))).scalars().all() == [1, 2]


async def test_a_writer_that_is_not_urgent_hands_back_a_lock_an_urgent_one_waits_for(
    tmp_path: Path,
) -> None:
    """It was already waiting for the lock itself when the urgent writer came: it lets
    the lock go at once, and takes it again once nobody urgent waits."""
    path = tmp_path / "t.db-writer"
    turn = WriterTurn(str(path))
    entered = asyncio.Event()

    async def write() -> None:
        async with turn.held():
            entered.set()

    try:
        async with holding(path) as holder:
            writing = asyncio.create_task(write())
            # Its thread now waits in flock() for the holder; then the urgent one comes.
            assert not await free_within(path, 0.3)
            async with holding(tmp_path / "t.db-writer-wanted", shared=True) as urgent:
                await holder.let_go()
                assert await free_within(path), "the lock was kept while an urgent one waited"
                assert not entered.is_set()
                await urgent.let_go()
                await asyncio.wait_for(writing, 10)
        assert entered.is_set()
        assert await free_within(path)
    finally:
        turn.close()


async def test_a_write_that_comes_while_a_cancelled_writer_still_waits_goes_after_it(
    db: Database, tmp_path: Path
) -> None:
    """A cancelled writer's thread still waits in flock() on the descriptor every write
    of this handle uses; the lock it gets is let go at once. A write that comes
    meanwhile waits for that let-go, then takes the lock and holds it for its block: it
    neither runs while the other process holds the lock nor loses the lock inside."""
    lock = tmp_path / "turn.db-writer"
    inside = asyncio.Event()
    leave = asyncio.Event()

    async def write() -> None:
        async with db.write() as conn:
            await conn.execute(text("INSERT INTO t (n) VALUES (2)"))
            inside.set()
            await leave.wait()

    async with holding(lock) as holder:
        cancelled = asyncio.create_task(_insert(db, 1))
        done, _ = await asyncio.wait({cancelled}, timeout=0.2)
        assert not done
        cancelled.cancel()
        await asyncio.gather(cancelled, return_exceptions=True)
        writing = asyncio.create_task(write())
        done, _ = await asyncio.wait({writing}, timeout=0.5)
        assert not done and not inside.is_set(), "the write went ahead of the other process"
        await holder.let_go()
        await asyncio.wait_for(inside.wait(), 10)
        assert not await free_within(lock, 0.3), "the write lost the lock inside its block"
        leave.set()
        await asyncio.wait_for(writing, 10)
    assert await free_within(lock)
    async with db.read() as conn:
        assert (await conn.execute(text("SELECT n FROM t"))).scalars().all() == [2]


async def test_writes_keep_no_descriptor_open_beyond_the_lock_files(db: Database) -> None:
    """The lock files are opened once per process (``WriterTurn._descriptor``): a
    write that opened them again each time would leak three descriptors a write."""
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("counts descriptors in Linux's /proc/self/fd")
    await _insert(db, 0, urgent=True)
    await _insert(db, 0)
    before = len(os.listdir("/proc/self/fd"))
    for n in range(20):
        await _insert(db, n, urgent=n % 2 == 0)
    assert len(os.listdir("/proc/self/fd")) <= before + 2
