"""Minutes of an outage in seconds of a test: one moved clock for the breakers, the
recorder, the webhook dispatcher and the embedded queue's due times.

The breakers, the recorder and the dispatcher take a clock at construction
(``postline_factory(clock=..., breakers=Breakers(policy, clock))``, as in
tests/integration/test_breaker_engine.py and test_expiry.py); the queue's due times
are compared with the real time inside the store, and the engine
writes them from the real time too (a retry at ``utcnow() + backoff``, a park at the
breaker's next trial moved onto the real time, engine.py ``_wait``). So "advance by
``d``" is: move the clock forward by ``d``, then bring the
due time of every queued job ``d`` closer, as the queue would see them ``d`` later.
No production code changes for it, and nothing about the policies: the breaker is the
default :class:`BreakerPolicy`, the retry schedule the default setting.

The clock only ever jumps while Postline is idle: no job leased and none due, and
whatever else the test says must be quiet (the webhook outbox: a delivery leased on the
dispatcher's clock would see its lease expire in the jump). The queue's leases and
heartbeats stay on the real time; with nothing leased, they cannot tell the jump from a
long quiet spell.

The order of a jump matters: the breakers' clock moves first, then the due times. The
other way round, the engine could lease a job made due while the breaker still sees the
past, find it open, and park the job again for the whole jump.

The queue's view of whose turn it is (queue/embedded.py ``_Turns``) still holds the due
times from before a jump until its next read of the store, within a second: the jobs a
jump made due go then. That costs real time, not virtual time.

The embedded queue only (SQLite or PostgreSQL store): the Redis queue keeps its due
times in Redis, with Redis' own clock.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, func, or_, select, update

from postline.store.schema import queue_jobs
from postline.store.types import utcnow
from tests.harness.clock import MovableClock
from tests.harness.polling import poll
from tests.harness.postline import PostlineUnderTest

__all__ = ["VirtualTime"]

#: How long, in real seconds, Postline may take to work through what a jump made due
#: (an attempt that waits for a DNS time-out at the default resolver lifetime included).
IDLE_DEADLINE = 60.0


def _not_leased(now: datetime) -> ColumnElement[bool]:
    c = queue_jobs.c
    return or_(c.lease_until.is_(None), c.lease_until < now)


class VirtualTime:
    """Moves ``clock`` (the one ``pl`` was built with) and the queue's due times with it."""

    def __init__(
        self,
        pl: PostlineUnderTest,
        clock: MovableClock,
        quiet: Callable[[], Awaitable[bool]],
    ) -> None:
        self.pl = pl
        self.clock = clock
        self.quiet = quiet
        self.jumps: list[datetime] = []
        """Every instant jumped to, in virtual time."""

    def __call__(self) -> datetime:
        return self.clock()

    async def _idle(self) -> bool:
        """Nothing leased, nothing due that the engine has yet to lease, and ``quiet``.

        The queue is asked first: a delivery commits its outcome, its events and the
        end of its job together, so once no job is leased or due no event is still to
        come, and ``quiet`` (the webhook outbox) is asked about all of them. Asked the
        other way round, a delivery finishing between the two answers wrote events
        after ``quiet`` said yes, and the jump expired the lease of their webhook POST
        in flight: the receiver got it twice (a test's race, seen under load in CI).
        """
        now = utcnow()
        c = queue_jobs.c
        async with self.pl.services.db.read() as conn:
            busy = await conn.execute(
                select(func.count())
                .select_from(queue_jobs)
                .where(or_(c.lease_until >= now, c.due_at <= now))
            )
            if int(busy.scalar_one()) != 0:
                return False
        return await self.quiet()

    async def next_due(self) -> datetime | None:
        """Once idle: the virtual instant the earliest queued job is due (None: no job)."""
        await poll(self._idle, timeout=IDLE_DEADLINE, what="Postline idle")
        async with self.pl.services.db.read() as conn:
            earliest = await conn.execute(select(func.min(queue_jobs.c.due_at)))
            due: datetime | None = earliest.scalar_one()
        return None if due is None else due + self.clock.offset

    async def jump_to(self, instant: datetime) -> None:
        """Move every clock to ``instant`` (virtual), Postline being idle."""
        step = instant - self()
        if step <= timedelta():
            return
        self.clock.offset += step  # the breakers first (see the module docstring)
        c = queue_jobs.c
        async with self.pl.services.db.write() as conn:
            # Row by row: SQLite stores the times as text, with no arithmetic on them.
            rows = await conn.execute(
                select(c.id, c.due_at, c.parked_until).where(_not_leased(utcnow()))
            )
            for row in rows.all():
                parked = None if row.parked_until is None else row.parked_until - step
                await conn.execute(
                    update(queue_jobs)
                    .where(c.id == row.id)
                    .values(due_at=row.due_at - step, parked_until=parked)
                )
        self.jumps.append(instant)
        self.pl.services.engine.wake()

    async def run_until(self, limit: datetime) -> None:
        """Let Postline work through everything due before ``limit``, jumping from one due
        time to the next; then jump to ``limit``."""
        while (due := await self.next_due()) is not None and due < limit:
            await self.jump_to(due)
        await self.jump_to(limit)

    async def run_while(self, busy: Callable[[], Awaitable[bool]], limit: datetime) -> None:
        """Jump from one due time to the next until ``busy`` says no (or ``limit``)."""
        while (due := await self.next_due()) is not None and await busy():
            assert due < limit, f"still busy at {self()}, next due {due}, past {limit}"
            await self.jump_to(due)
        assert not await busy(), f"still busy at {self()}, with nothing queued"
