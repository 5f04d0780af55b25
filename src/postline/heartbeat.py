"""A worker's heartbeat: how the others learn that it died, in seconds.

Each process that delivers (``postline serve``, ``postline worker``) beats
in the queue every ``POSTLINE_HEARTBEAT_SECONDS``; a worker that has not beaten
for ``POSTLINE_HEARTBEAT_TIMEOUT`` is dead, and its leases are free again
whatever they said. The same loop frees them: at every beat each worker runs
``Queue.recover_expired``, so a SIGKILLed worker's mail flows again within the
timeout plus one interval (15 + 5 s by default), not after its leases ran out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from postline.backoff import Backoff
from postline.queue import Queue

log = logging.getLogger("postline.heartbeat")


class Heartbeat:
    def __init__(self, queue: Queue, owner: str, interval: float, timeout: float) -> None:
        self.queue = queue
        self.owner = owner
        self.interval = interval
        self.timeout = timeout
        #: loop.time() until which the last beat that got through keeps this worker alive.
        self._alive_until = float("-inf")

    @property
    def live(self) -> bool:
        """Whether the others see this worker alive: only then may it lease.

        A worker that leased while the others thought it dead would see its jobs
        freed under it; a margin of one interval covers a beat that is slow to land.
        """
        loop = asyncio.get_running_loop()
        return loop.time() < self._alive_until - min(self.interval, self.timeout / 2)

    async def beat(self) -> None:
        started = asyncio.get_running_loop().time()
        await self.queue.beat(self.owner, self.timeout)
        self._alive_until = started + self.timeout

    async def run(self, stop: asyncio.Event) -> None:
        """Beat, then free the leases of dead workers, every interval until ``stop``.

        A failure (the queue is away) is retried sooner, never later than one
        interval: the beats are what keep this worker's own jobs.
        """
        backoff = Backoff("worker heartbeat", first=min(1.0, self.interval), cap=self.interval)
        while not stop.is_set():
            wait = self.interval
            try:
                await self.beat()
                freed = await self.queue.recover_expired()
                if freed:
                    log.warning("freed %d job leases of stopped workers", freed)
                backoff.succeeded()
            except Exception as exc:
                wait = backoff.failed(exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=wait)

    async def retire(self) -> None:
        """The worker stops (its jobs already released): the others need not wait for it."""
        self._alive_until = float("-inf")
        try:
            await self.queue.retire(self.owner)
        except Exception as exc:
            log.warning("ending the heartbeat of %s failed: %s", self.owner, exc)
