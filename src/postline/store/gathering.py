"""Group read: many concurrent askers, one read for all of them.

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
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class GroupRead(Generic[T, R]):
    def __init__(
        self,
        read: Callable[[list[T]], Awaitable[Sequence[R]]],
        *,
        name: str,
        max_batch: int = 500,
    ) -> None:
        self._read = read
        self._name = name
        self._max_batch = max_batch
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._reader: asyncio.Task[None] | None = None

    async def get(self, item: T) -> R:
        """The answer for ``item``, read together with those asked for meanwhile."""
        answer: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, answer))
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read_all(), name=self._name)
        return await asyncio.shield(answer)

    async def _read_all(self) -> None:
        while self._waiting:
            batch = self._waiting[: self._max_batch]
            del self._waiting[: self._max_batch]
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
                if not answer.done():
                    answer.set_result(value)
