"""Group commit: many concurrent writers, one transaction per batch.

Callers ``await batcher.submit(item)``; a single writer task takes everything
waiting (up to ``max_batch``) and hands it to ``write`` in one go, so the
cost of a durable commit is paid once per batch. If a batch fails, its items
are written one by one so a single bad item cannot sink the others. An item
that fails alone because the database connection broke is tried again a few
times, with pauses, before its caller gets the exception: a PostgreSQL
failover should cost a moment, not an outcome.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from sqlalchemy.exc import DBAPIError

log = logging.getLogger("postline.store")

T = TypeVar("T")

#: Pauses before writing an item again after a broken connection.
RETRY_PAUSES = (0.2, 1.0, 3.0)


def connection_broke(exc: BaseException) -> bool:
    """Whether a write failed because the connection did, not because of the data."""
    if isinstance(exc, DBAPIError):
        return (
            bool(exc.connection_invalidated)
            or isinstance(exc.orig, OSError)
            or ("connection" in str(exc.orig).lower())
        )
    return isinstance(exc, OSError | ConnectionError)


class Batcher(Generic[T]):
    def __init__(
        self, write: Callable[[list[T]], Awaitable[None]], *, name: str, max_batch: int = 200
    ) -> None:
        self._write = write
        self._name = name
        self._max_batch = max_batch
        self._waiting: list[tuple[T, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> None:
        """Return once committed; shielded, so a cancelled caller's item is still written."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_all(), name=self._name)
        await asyncio.shield(done)

    async def _write_all(self) -> None:
        while self._waiting:
            batch = self._waiting[: self._max_batch]
            del self._waiting[: self._max_batch]
            if await self._try(batch) or len(batch) == 1:
                continue
            for entry in batch:
                await self._try([entry])

    async def _try(self, batch: list[tuple[T, asyncio.Future[None]]]) -> bool:
        pauses = iter(RETRY_PAUSES if len(batch) == 1 else ())
        while True:
            try:
                await self._write([item for item, _ in batch])
                break
            except Exception as exc:
                pause = next(pauses, None) if connection_broke(exc) else None
                if pause is not None:
                    log.warning("%s: connection lost while writing; retrying", self._name)
                    await asyncio.sleep(pause)
                    continue
                if len(batch) > 1:
                    # Said out loud: a batch that fails every time (a bug that breaks only
                    # batches) would otherwise show as nothing but lost throughput.
                    log.warning(
                        "%s: a batch of %d failed (%s); writing its items one by one",
                        self._name,
                        len(batch),
                        type(exc).__name__,
                    )
                if len(batch) == 1:
                    log.exception("%s: writing one item failed", self._name)
                    _, done = batch[0]
                    if not done.done():
                        done.set_exception(exc)
                return False
        for _, done in batch:
            if not done.done():
                done.set_result(None)
        return True
