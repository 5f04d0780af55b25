"""Group read (and group commit): many concurrent askers, one call for all of them.

The read-side twin of ``batching.Batcher``. The engine starts up to
``concurrency`` deliveries at once, and each used to read its email, its
recipients and its lease on its own: on SQLite every statement is several hops
to the driver's thread, and on PostgreSQL a round trip and a pooled connection
each. Callers ``await gather.get(item)``; one reader task takes everything
waiting and answers it with one read (``read(items)`` returns one answer per
item, in order). What arrives while a read is running waits for the next one,
so an answer is never older than the moment it was asked for. A failed read
fails every caller of that read with its exception, as their own reads would
have failed.

The accept path's group commit (``accept.Acceptor``) is the same loop with a
transaction for the read: there an answer may be an exception, which only its
own caller hears (a submission refused for its own data), and ``size`` weighs
an item (its emails) so that one transaction stays bounded. A caller cancelled
while its item still waits takes it back: nothing is done for nobody.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def _one(_: object) -> int:
    return 1


class GroupRead(Generic[T, R]):
    def __init__(
        self,
        read: Callable[[list[T]], Awaitable[Sequence[R | Exception]]],
        *,
        name: str,
        max_batch: int = 500,
        size: Callable[[T], int] = _one,
    ) -> None:
        self._read = read
        self._name = name
        self._max_batch = max_batch
        self._size = size
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._reader: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        """Items asked for and not yet taken by a read (the next read's, so far)."""
        return len(self._waiting)

    async def get(self, item: T) -> R:
        """The answer for ``item``, read together with those asked for meanwhile."""
        answer: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, answer))
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read_all(), name=self._name)
        try:
            # Not shielded: ``answer`` is this caller's alone, so cancelling the caller
            # cancels only it, and the read skips an answer that is done. (The shield
            # was two more callbacks and a future per get: 3.8% of the delivery
            # process's samples.)
            return await answer
        except asyncio.CancelledError:
            # Not taken yet: withdrawn, so nothing is read (or written) for nobody.
            self._waiting = [entry for entry in self._waiting if entry[1] is not answer]
            raise

    def _take(self) -> list[tuple[T, asyncio.Future[R]]]:
        """The oldest waiting items up to ``max_batch`` by size; at least one."""
        total = 0
        count = 0
        for item, _ in self._waiting:
            total += self._size(item)
            if count and total > self._max_batch:
                break
            count += 1
        batch = self._waiting[:count]
        del self._waiting[:count]
        return batch

    async def _read_all(self) -> None:
        while self._waiting:
            batch = self._take()
            try:
                answers = await self._read([item for item, _ in batch])
                if len(answers) != len(batch):
                    raise RuntimeError(f"{self._name}: {len(answers)} answers for {len(batch)}")
            except Exception as exc:
                for _, answer in batch:
                    if not answer.done():
                        answer.set_exception(exc)
                continue
            except BaseException:  # cancelled: the callers must not wait for ever
                for _, answer in batch:
                    answer.cancel()
                raise
            for (_, answer), value in zip(batch, answers, strict=True):
                if answer.done():
                    continue
                if isinstance(value, Exception):
                    answer.set_exception(value)
                else:
                    answer.set_result(value)
