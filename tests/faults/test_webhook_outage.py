"""A webhook receiver down for an hour of simulated time, then back: every event is
delivered exactly once, none is lost, and the endpoint is not disabled on the way.

Time is simulated through the dispatcher's injectable clock: the test moves it to each
due retry in turn, so the real retry schedule (5 s, 5 min, 30 min, 2 h, ...) runs in
seconds. "Down" is either a receiver that answers 500 or one that is not listening at
all (connection refused). The emails themselves are delivered in real time while the
receiver is down; only their events wait.

With the default schedule the hour holds four attempts of each event (at 0, 5 s,
5 min 5 s and 35 min 5 s); the fifth falls due at 2 h 35 min 5 s, after the receiver
is back, and succeeds. ``webhook_disable_after_seconds`` is two hours here: longer than
the outage, so the endpoint must still be enabled afterwards.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import partial
from typing import Any, Literal

from sqlalchemy import select

from postline.store.schema import events, webhook_deliveries, webhooks
from postline.store.types import utcnow
from tests.crash.invariants import received_copies
from tests.faults.scenario import FaultRun, Topology, fault_modes, poll
from tests.harness.fake_mx import FakeMX
from tests.harness.postline import Factory, PostlineUnderTest
from tests.harness.receiver import WebhookReceiver

EMAILS = 4  # two recipients each: a queued and a delivered event per recipient
OUTAGE = timedelta(hours=1)
SCHEDULE = "5,300,1800,7200,18000,36000,36000"  # the default, spelled out for the arithmetic
ATTEMPTS_IN_THE_OUTAGE = 4  # at 0, 5, 305 and 2105 s; the next is at 9305 s
DISABLE_AFTER = 2 * 3600


class SimulatedClock:
    """The dispatcher's ``clock``: it stands still until the test moves it (forward only),
    so no retry falls due behind the test's back, however slow the machine."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def move_to(self, moment: datetime) -> None:
        self.now = max(self.now, moment)


async def deliveries(pl: PostlineUnderTest) -> list[Any]:
    async with pl.services.db.read() as conn:
        rows = await conn.execute(select(webhook_deliveries))
        return list(rows.all())


async def event_count(pl: PostlineUnderTest) -> int:
    async with pl.services.db.read() as conn:
        return len((await conn.execute(select(events.c.id))).all())


async def failing_since(pl: PostlineUnderTest) -> datetime | None:
    """When the endpoint started failing continuously (what disabling is measured from)."""
    async with pl.services.db.read() as conn:
        since: datetime | None = (await conn.execute(select(webhooks.c.failing_since))).scalar_one()
        return since


async def endpoint(pl: PostlineUnderTest) -> dict[str, Any]:
    response = await pl.client.get("/v1/webhooks", headers=pl.auth())
    assert response.status_code == 200, response.text
    (only,) = response.json()["data"]
    assert isinstance(only, dict)
    return only


async def attempted(pl: PostlineUnderTest, times: int) -> list[Any] | None:
    """Every event's delivery made ``times`` attempts, each recorded (no lease held)."""
    rows = await deliveries(pl)
    if len(rows) != await event_count(pl):
        return None  # not every event is fanned out yet
    done = all(r.attempts == times and r.lease_until is None for r in rows)
    return rows if done else None


# Both kinds of "down" on the default install, one on PostgreSQL + Redis too.
@fault_modes("down", ["http_500", "refused"], pg_redis="refused")
async def test_receiver_down_for_an_hour_gets_every_event_once_when_back(
    postline_factory: Factory,
    fake_mx: FakeMX,
    topology: Topology,
    down: Literal["http_500", "refused"],
) -> None:
    receiver = WebhookReceiver(default_status=500)
    await receiver.start()
    try:
        if down == "refused":
            await receiver.stop()  # nothing listens on its port for the hour
        clock = SimulatedClock()
        run = await FaultRun.start(
            postline_factory,
            topology,
            receiver,
            clock=clock,
            webhook_retry_schedule=SCHEDULE,
            webhook_disable_after_seconds=DISABLE_AFTER,
        )
        dispatcher = run.pl.services.dispatcher
        outage_ends = clock() + OUTAGE

        await run.send_many(EMAILS, ["dest.test"], "hook")
        await run.wait_all_final()
        rows = await poll(lambda: attempted(run.pl, 1), what="the first attempt of each event")

        # The hour: move the clock to each due retry in turn; every one fails.
        attempts = 1
        while (due := max(r.next_attempt_at for r in rows)) < outage_ends:
            assert {r.status for r in rows} == {"pending"}, rows
            clock.move_to(due + timedelta(seconds=1))
            dispatcher.wake()
            attempts += 1
            rows = await poll(partial(attempted, run.pl, attempts), what=f"attempt {attempts}")
        assert attempts == ATTEMPTS_IN_THE_OUTAGE
        assert {r.status for r in rows} == {"pending"}, rows
        answered = [h for h in receiver.received if h.status != 500]
        assert answered == [], answered  # nothing was acknowledged during the outage
        if down == "http_500":
            assert len(receiver.received) == len(rows) * ATTEMPTS_IN_THE_OUTAGE
        hook = await endpoint(run.pl)
        assert hook["enabled"] is True, hook
        since = await failing_since(run.pl)
        assert since is not None  # the endpoint is known to be failing ...
        assert (clock() - since).total_seconds() < DISABLE_AFTER  # ... for less than that

        # The receiver is back at the end of the hour; the next retry falls due later.
        clock.move_to(outage_ends)
        receiver.default_status = 200
        if down == "refused":
            await receiver.start()
        clock.move_to(due + timedelta(seconds=1))
        dispatcher.wake()
        rows = await poll(lambda: attempted(run.pl, attempts + 1), what="the retry after")
        assert {r.status for r in rows} == {"succeeded"}, rows
        gap = (due - outage_ends).total_seconds()
        print(f"\n[{topology.name}/{down}] {len(rows)} events, {attempts} failed attempts each")
        print(f"in the hour, delivered on the next retry, {gap:.0f} s of simulated time later")

        hook = await endpoint(run.pl)
        assert (hook["enabled"], hook["disabled_reason"]) == (True, None), hook
        assert await failing_since(run.pl) is None  # healthy again
        # Each event id acknowledged exactly once (and all of them): checked by finish().
        await run.finish(lambda: received_copies([fake_mx]))
    finally:
        await receiver.stop()
