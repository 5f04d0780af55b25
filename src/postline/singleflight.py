"""One lookup per key at a time: callers that ask while it runs share its answer.

A cache miss is rarely alone. When mail for a new domain arrives, the engine starts
up to a hundred deliveries to it at once, and each found the MX, MTA-STS and TLSA caches
empty: each sent its own DNS queries for the same names, and the first answer to
come back made the others' redundant. With ``SingleFlight`` they wait for the one
lookup instead (the same answer, or the same error, as their own would have been).

The lookup runs in a task of its own, so a caller that is cancelled (its lease lost,
a shutdown) does not cancel it for the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    def __init__(self) -> None:
        self._running: dict[K, asyncio.Future[V]] = {}

    async def run(self, key: K, lookup: Callable[[], Awaitable[V]]) -> V:
        """``lookup()``'s answer, from the run for ``key`` under way if there is one."""
        running = self._running.get(key)
        if running is None:
            running = asyncio.ensure_future(lookup())
            self._running[key] = running
            running.add_done_callback(lambda done: self._finished(key, done))
        return await asyncio.shield(running)

    async def close(self) -> None:
        """Cancel the lookups under way: no caller waits for them after a shutdown, and
        one may be slow (the MTA-STS cache's may fetch a policy over HTTPS)."""
        running = list(self._running.values())
        for lookup in running:
            lookup.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    def _finished(self, key: K, done: asyncio.Future[V]) -> None:
        if self._running.get(key) is done:
            del self._running[key]
        if not done.cancelled():
            done.exception()  # retrieved: every caller may have gone before it ended
