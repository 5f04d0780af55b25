"""Another process holding one of the lock files beside a SQLite database
(``store.writer_turn``) until told to let go: a writer of another process, as the
kernel sees it."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_SH if sys.argv[2:] == ["shared"] else fcntl.LOCK_EX)
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

    def stop(self) -> None:
        """After a failed test: the process ends, whatever it held."""
        if self.process.returncode is None:
            self.process.kill()


@contextlib.asynccontextmanager
async def holding(path: Path, *, shared: bool = False) -> AsyncIterator[Holder]:
    holder = await hold(path, shared=shared)
    try:
        yield holder
    finally:
        holder.stop()
        await holder.process.wait()


async def hold(path: Path, *, shared: bool = False) -> Holder:
    """``shared``: as an urgent writer says, on the ``-wanted`` file, that it waits."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        HOLDER,
        str(path),
        *(["shared"] if shared else []),
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


async def taken_within(path: Path, seconds: float = 10.0) -> bool:
    """Whether some other open of the lock file holds it before ``seconds`` pass."""
    deadline = asyncio.get_running_loop().time() + seconds
    while await free_within(path, 0):
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True
