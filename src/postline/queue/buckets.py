"""Rate buckets of the embedded queue: concurrent takes share one write transaction.

Every authenticated request takes a token, so on the embedded queue every
request, reads included, becomes a write. On SQLite writes go one at a time,
behind the engine's leases and outcomes, and each commit is an fsync. So the
takes waiting in this process are written together, in one transaction, the
way group commit writes outcomes (``store.batching``); one take alone is still
one short statement (``store.rate_buckets``). No retries: a take that fails
fails its callers at once, and the rate limiter lets them through.

Within a transaction the takes run in bucket order, so two processes on
PostgreSQL lock the rows of their batches in the same order and never deadlock.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from postline.queue.base import Tokens, wait_for_token
from postline.store import rate_buckets
from postline.store.db import Database

#: Most takes per transaction: a transaction holds the SQLite writer while it runs.
_MOST = 200


@dataclass
class _Take:
    bucket: str
    rate: float
    burst: int
    count: int
    done: asyncio.Future[Tokens] = field(repr=False)


class BucketTaker:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._waiting: list[_Take] = []
        self._writer: asyncio.Task[None] | None = None

    async def take(self, bucket: str, rate: float, burst: int, count: int = 1) -> Tokens:
        done: asyncio.Future[Tokens] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Take(bucket, rate, burst, count, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_all(), name="rate-buckets")
        return await done

    async def _write_all(self) -> None:
        while self._waiting:
            batch = sorted(self._waiting[:_MOST], key=lambda take: take.bucket)
            del self._waiting[:_MOST]
            try:
                results = await self._write(batch)
            except Exception as exc:
                for take in batch:
                    if not take.done.done():
                        take.done.set_exception(exc)
                continue
            for take, tokens in zip(batch, results, strict=True):
                if not take.done.done():
                    take.done.set_result(tokens)

    async def _write(self, batch: list[_Take]) -> list[Tokens]:
        results = []
        async with self.db.write() as conn:
            for take in batch:
                taken, tokens = await rate_buckets.take(
                    conn, self.db.is_sqlite, take.bucket, take.rate, take.burst, take.count
                )
                if taken:
                    results.append(Tokens(allowed=True, remaining=tokens, wait=0.0))
                else:
                    wait = wait_for_token(tokens, take.rate, take.count)
                    results.append(Tokens(allowed=False, remaining=tokens, wait=wait))
        return results
