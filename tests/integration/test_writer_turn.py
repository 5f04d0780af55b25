"""The lock file beside a SQLite database: whose turn it is to write, across processes.

Another process stands for the other half of ``postline serve`` here: a small Python
holding the lock file until told to let go.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio
from sqlalchemy import text

from postline.store.db import Database
from postline.store.writer_turn import WriterTurn

HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.readline()
"""


class Holder:
    """Another process holding the lock file until :meth:`let_go`."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def let_go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(b"go\n")
        await self.process.stdin.drain()
        await asyncio.wait_for(self.process.wait(), 10)


async def hold(path: Path) -> Holder:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        HOLDER,
        str(path),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    assert await asyncio.wait_for(process.stdout.readline(), 10) == b"held\n"
    return Holder(process)


async def free_within(path: Path, seconds: float = 10.0) -> bool:
    """Whether another open of the lock file can take it before ``seconds`` pass."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = asyncio.get_running_loop().time() + seconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if asyncio.get_running_loop().time() > deadline:
                    return False
                await asyncio.sleep(0.01)
                continue
            fcntl.flock(fd, fcntl.LOCK_UN)
            return True
    finally:
        os.close(fd)


@pytest_asyncio.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'turn.db'}")
    async with database.write() as conn:
        await conn.execute(text("CREATE TABLE t (n INT)"))
    try:
        yield database
    finally:
        await database.close()


async def _insert(db: Database, n: int) -> None:
    async with db.write() as conn:
        await conn.execute(text("INSERT INTO t (n) VALUES (:n)"), {"n": n})


async def test_a_write_waits_for_the_other_process_and_goes_on_when_it_lets_go(
    db: Database, tmp_path: Path
) -> None:
    holder = await hold(tmp_path / "turn.db-writer")
    writing = asyncio.create_task(_insert(db, 1))
    done, _ = await asyncio.wait({writing}, timeout=0.5)
    assert not done, "the write went ahead while another process held the lock file"
    await holder.let_go()
    await asyncio.wait_for(writing, 10)
    async with db.read() as conn:
        assert (await conn.execute(text("SELECT n FROM t"))).scalars().all() == [1]
    assert await free_within(tmp_path / "turn.db-writer")


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
