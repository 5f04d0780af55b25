"""One job's lease while it is delivered: renewed as it runs, asked before the final dot.

Leases are short (``POSTLINE_LEASE_SECONDS``, 30 s) so that a killed worker's
mail moves on quickly; a delivery that runs longer keeps its lease by
renewing it. A worker can still lose one: it stalled past the lease or its
heartbeat, and another worker took the job. The message then belongs to the
new owner, so the old one must not end its DATA with the final dot (that is
what would make a second copy) nor record anything: the SMTP code asks
``still_mine`` with the body written and the dot not yet sent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from postline.queue import Job, Queue

log = logging.getLogger("postline.engine")

#: Asked right before the final dot of DATA: True to send it, False to abort.
StillMine = Callable[[], Awaitable[bool]]


class LeaseLost(Exception):
    """The job's lease went to another worker: stop before the final dot, record nothing."""


async def always_mine() -> bool:
    """For sends that hold no lease (tests, tools)."""
    return True


class LeaseGuard:
    def __init__(self, queue: Queue, job: Job, lease_seconds: float) -> None:
        self.queue = queue
        self.job = job
        self.lease_seconds = lease_seconds
        #: Set once the queue said the lease is another worker's; it never comes back.
        self.lost = False

    async def keep(self) -> None:
        """Renew the lease every third of it until cancelled or lost."""
        interval = max(self.lease_seconds / 3, 0.5)
        while not self.lost:
            await asyncio.sleep(interval)
            try:
                kept = await self.queue.extend(self.job, self.lease_seconds)
            except Exception as exc:
                # The queue is away; the lease still runs. Try again at the next tick.
                log.warning("extending the lease of job_id=%s failed: %s", self.job.id, exc)
                continue
            if not kept:
                self.lost = True
                log.warning("lease lost job_id=%s", self.job.id)

    async def still_mine(self) -> bool:
        """Ask the queue now; False if the lease is lost, or if the queue cannot say.

        ``Queue.confirm``: the lease is renewed when less than most of it is
        left, so that it lasts well past the dot, for the final reply and the
        recording; a lease taken or renewed moments ago is only looked at (a
        write per message was a tenth of the engine's CPU). When the queue does
        not answer, the lease may have gone with this worker's heartbeat:
        aborting costs a retry, sending could cost a duplicate.
        """
        if self.lost:
            return False
        try:
            kept = await self.queue.confirm(self.job, self.lease_seconds)
        except Exception as exc:
            log.warning("cannot confirm the lease of job_id=%s: %s", self.job.id, exc)
            return False
        if not kept:
            self.lost = True
        return kept

    def check(self) -> None:
        """Raise ``LeaseLost`` if the lease is known lost (before starting to send)."""
        if self.lost:
            raise LeaseLost(self.job.id)
