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

A write a client is waiting on (an accept: the API's 202, the submission port's
250) goes first. Under a steady load the delivery and webhook processes held the
lock some 90% of the time, in transactions of 3-12 ms each, and an accept waited
for two or three of them (a median of 19 ms at 200 single sends a second). So an
urgent writer says so while it waits, with a shared lock on a second file
(``-wanted``), and a writer that is not urgent takes its turn only once nobody
says so. It waits at most for the one transaction running and one that had
already asked. The others still have their turns: an urgent writer stops saying
so the moment it has the lock, and a group commit asks only once the one before
it has finished, so the writers that were waiting go in between.
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
        #: Held shared by urgent writers while they wait for the lock.
        self.wanted_path = f"{path}-wanted"
        self.wait_seconds = wait_seconds
        self._fd: int | None = None
        #: Two opens of the wanted file: one to say so, one to look whether anybody does
        #: (one open would turn its own shared lock into the exclusive one it looks with).
        self._saying: int | None = None
        self._looking: int | None = None
        self._pid = 0
        #: Set once the thread of a waiter that stopped waiting has let the lock go.
        self._abandoned: asyncio.Event | None = None

    def _descriptor(self) -> int:
        # Opened in this process: a descriptor inherited through fork shares its lock
        # with the parent's, so it would never make the two wait for each other.
        if self._fd is None or self._pid != os.getpid():
            self._fd = _open(self.path)
            self._saying = _open(self.wanted_path)
            self._looking = _open(self.wanted_path)
            self._pid = os.getpid()
        return self._fd

    @contextlib.asynccontextmanager
    async def held(self, *, urgent: bool = False) -> AsyncIterator[None]:
        """Hold the lock for the block; the caller's own lock keeps one waiter per handle.

        ``urgent``: a client waits on this write; writers that are not urgent let it
        go first. After ``wait_seconds`` without the lock the block runs all the same,
        left to SQLite's busy handler: a write opened inside another on a second
        handle of one process then fails as it always did ("database is locked"), not
        for ever.
        """
        fd = self._descriptor()
        saying = urgent and self._say_wanted()
        have = False
        try:
            have = await (self._take_turn(fd) if urgent else self._take_after_urgent(fd))
        finally:
            if saying:
                fcntl.flock(self._saying_fd, fcntl.LOCK_UN)
        try:
            yield
        finally:
            if have:
                fcntl.flock(fd, fcntl.LOCK_UN)

    async def _take_turn(self, fd: int) -> bool:
        if self._abandoned is None or await self._abandoned_let_go(self._abandoned):
            return await self._take(fd)
        return False

    async def _take_after_urgent(self, fd: int) -> bool:
        """The lock once no urgent writer waits for it: one that asked while this writer
        was already waiting for the lock itself is let go first, by handing the lock
        back to the kernel, which gives it to a waiter (until ``wait_seconds``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_seconds
        while True:
            await self._after_urgent_writers()
            have = await self._take_turn(fd)
            if not have or loop.time() >= deadline or not self._urgent_waiting():
                return have
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _urgent_waiting(self) -> bool:
        fd = self._looking
        assert fd is not None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False

    @property
    def _saying_fd(self) -> int:
        assert self._saying is not None
        return self._saying

    def _say_wanted(self) -> bool:
        """Say that an urgent writer waits (False: a writer was looking that very moment,
        so this one waits as any other would)."""
        try:
            fcntl.flock(self._saying_fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    async def _after_urgent_writers(self) -> None:
        """Return once no urgent writer says it waits, or after ``wait_seconds``.

        The look is an exclusive lock on the wanted file, let go at once: the kernel
        grants it when the last shared one is let go. A caller that stops waiting
        leaves it to the thread, whose lock is let go when it comes.
        """
        fd = self._looking
        assert fd is not None
        if self._urgent_waiting():
            looked = asyncio.get_running_loop().run_in_executor(
                None, fcntl.flock, fd, fcntl.LOCK_EX
            )
            looked.add_done_callback(lambda done: self._stop_looking(fd, done))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(looked), self.wait_seconds)

    def _stop_looking(self, fd: int, done: asyncio.Future[None]) -> None:
        # As in ``_let_go``: only while that descriptor is still this turn's.
        if self._looking == fd and not done.cancelled() and done.exception() is None:
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
        if self._pid == os.getpid():
            for fd in (self._fd, self._saying, self._looking):
                if fd is not None:
                    os.close(fd)
        self._fd = self._saying = self._looking = None


def _open(path: str) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
