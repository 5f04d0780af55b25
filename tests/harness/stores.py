"""Store-backed adapters built on a freshly migrated database, for tests that want the
real schema without a whole Postline."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from postline.queue.embedded import EmbeddedQueue
from postline.store.db import Database
from postline.store.migrate import upgrade_async

__all__ = ["embedded_queue"]


@contextlib.asynccontextmanager
async def embedded_queue(url: str) -> AsyncIterator[EmbeddedQueue]:
    """Migrate ``url`` to the head revision and yield an EmbeddedQueue on it; the
    database connection is closed afterwards, whatever the test did."""
    await upgrade_async(url)
    db = Database(url)
    try:
        yield EmbeddedQueue(db)
    finally:
        await db.close()
