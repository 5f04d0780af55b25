"""Whose turn it is to write a SQLite database, across processes, handed over at once.

SQLite lets one connection write at a time; the others wait in its busy handler,
which sleeps and tries again (1, 2, 5, ... then 100 ms between tries). With two
processes writing small transactions back to back (``postline serve``: the API and
webhooks in one, delivery in the other), a waiter asleep in its 100 ms sleep
misses every moment the lock is free: a 500-email accept that held the lock for
66 ms waited up to 1.5 s for it. An exclusive ``flock`` on a file beside the
database is handed over by the kernel the moment its holder lets go, so every
writer of every process takes it before ``BEGIN IMMEDIATE``. SQLite's own
locking still guards the data: a writer that does not take the file lock (an
older Postline, the ``sqlite3`` shell) is only slower to get its turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import AsyncIterator

#: How long a writer waits for the lock file before leaving it to SQLite's busy handler
#: (whose own timeout, ``PRAGMA busy_timeout``, is as long).
WAIT_SECONDS = 10.0


class WriterTurn:
    """An exclusive lock file, taken without blocking the event loop."""

    def __init__(self, path: str, wait_seconds: float = WAIT_SECONDS) -> None:
        self.path = path
        self.wait_seconds = wait_seconds
        self._fd: int | None = None
        self._pid = 0
        #: Set once the thread of a waiter that stopped waiting has let the lock go.
        self._abandoned: asyncio.Event | None = None

    def _descriptor(self) -> int:
        # Opened in this process: a descriptor inherited through fork shares its lock
        # with the parent's, so it would never make the two wait for each other.
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._pid = os.getpid()
        return self._fd

    @contextlib.asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        """Hold the lock for the block; the caller's own lock keeps one waiter per handle.

        After ``wait_seconds`` without it the block runs all the same, left to SQLite's
        busy handler: a write opened inside another on a second handle of one
        process then fails as it always did ("database is locked"), not for ever.
        """
        fd = self._descriptor()
        have = False
        if self._abandoned is None or await self._abandoned_let_go(self._abandoned):
            have = await self._take(fd)
        try:
            yield
        finally:
            if have:
                fcntl.flock(fd, fcntl.LOCK_UN)

    async def _abandoned_let_go(self, released: asyncio.Event) -> bool:
        """Wait for an earlier waiter's thread to take and let go of the lock (False:
        not within ``wait_seconds``). Taking it meanwhile would be undone by that
        let-go: a lock belongs to the descriptor, not to the caller."""
        try:
            await asyncio.wait_for(released.wait(), self.wait_seconds)
        except TimeoutError:
            return False
        return True

    async def _take(self, fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return await self._wait_for_lock(fd)
        return True

    async def _wait_for_lock(self, fd: int) -> bool:
        """Block in a thread until the lock is ours (True), or ``wait_seconds`` pass (False).

        A caller that stops waiting (timed out, cancelled) cannot stop the thread: when
        the lock comes to it, it is let go at once, or no writer would ever have it again.
        """
        loop = asyncio.get_running_loop()
        waiting = loop.run_in_executor(None, fcntl.flock, fd, fcntl.LOCK_EX)
        try:
            await asyncio.wait_for(asyncio.shield(waiting), self.wait_seconds)
        except BaseException as exc:
            released = asyncio.Event()
            self._abandoned = released
            waiting.add_done_callback(lambda done: self._let_go(fd, done, released))
            if isinstance(exc, TimeoutError):
                return False
            raise
        return True

    def _let_go(self, fd: int, done: asyncio.Future[None], released: asyncio.Event) -> None:
        # Only while that descriptor is still this lock's: a closed one's number may be
        # another file's by now (and closing it let the lock go already).
        if self._fd == fd and not done.cancelled() and done.exception() is None:
            fcntl.flock(fd, fcntl.LOCK_UN)
        released.set()
        if self._abandoned is released:
            self._abandoned = None

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None
