"""How long after an outage ends users wait for their mail, at the default policies.

The other fault scenarios swap in breakers that never open and a 0.2 s retry schedule,
so that a fault costs seconds; they show what happens to the mail, not when. These two
keep the default :class:`BreakerPolicy` (open after 5 failed transactions, 5 minutes
open, 2 half-open trials that must succeed) and the default retry schedule (60 s,
5 min, 15 min, ...), and SMTP timeouts and lease at their defaults too, and move a
clock instead of waiting (tests/faults/virtual_time.py): the breakers', the
recorder's, the webhook dispatcher's, and the embedded queue's due times.

- every MX of a destination is down (connection refused) for ``MX_OUTAGE``;
- the nameserver does not answer (a time-out at the resolver's default lifetime) the
  destination's MX query for ``DNS_OUTAGE``.

Each prints when the last email was delivered, counted from the end of the outage, in
the virtual time: the figures of docs/RELIABILITY.md ("Recovery at the defaults").
Reproduce: ``.venv/bin/pytest -q -s tests/faults/test_recovery_at_defaults.py``.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select

from postline.config import Settings
from postline.delivery.breaker import BreakerPolicy, Breakers, BreakerState
from postline.store.schema import delivery_attempts
from tests.crash.invariants import received_copies
from tests.faults.scenario import FaultRun, Topology
from tests.faults.virtual_time import VirtualTime
from tests.harness.clock import MovableClock
from tests.harness.fake_dns import FakeDNS
from tests.harness.fake_mx import FakeMX
from tests.harness.postline import Factory, PostlineUnderTest
from tests.harness.receiver import WebhookReceiver

#: What the test harness tunes for speed, put back to the defaults users run with.
DEFAULTS = {
    name: Settings.model_fields[name].default
    for name in ("retry_schedule", "smtp_connect_timeout", "smtp_command_timeout", "lease_seconds")
}
#: Loopback webhook receiver (the default refuses private addresses).
OVERRIDES = {**DEFAULTS, "webhook_allow_private": True}
#: Not a multiple of the breaker's open period, so that no trial falls on the recovery.
MX_OUTAGE = timedelta(minutes=12)
DNS_OUTAGE = timedelta(minutes=10)
#: Past the last retry before the mail would give up: the run must be over long before.
HORIZON = timedelta(hours=6)
EMAILS = 6  # one destination, one job each: one more than the breaker's threshold

DEFAULT_INSTALL = pytest.mark.parametrize("topology", ["sqlite"], indirect=True)


async def _delivered_at(pl: PostlineUnderTest) -> datetime:
    """When the last recipient was delivered, on the recorder's (virtual) clock."""
    c = delivery_attempts.c
    async with pl.services.db.read() as conn:
        last = await conn.execute(select(func.max(c.created_at)).where(c.status == "delivered"))
        at: datetime = last.scalar_one()
    return at


def _minutes(span: timedelta) -> str:
    return f"{span.total_seconds() / 60:.1f} min"


async def _attempt_rows(pl: PostlineUnderTest) -> list[tuple[str, str]]:
    c = delivery_attempts.c
    async with pl.services.db.read() as conn:
        return [(r.scope, r.status) for r in await conn.execute(select(c.scope, c.status))]


async def _start(
    postline_factory: Factory, topology: Topology, receiver: WebhookReceiver
) -> tuple[FaultRun, VirtualTime]:
    """Postline at the defaults, on one moved clock: default breakers, recorder, dispatcher."""
    moved = MovableClock()
    run = await FaultRun.start(
        postline_factory,
        topology,
        receiver,
        defaults=True,
        clock=moved,
        breakers=Breakers(BreakerPolicy(), moved),
        **OVERRIDES,
    )
    return run, VirtualTime(run.pl, moved, quiet=run.webhooks_settled)


async def _until_delivered(
    run: FaultRun, clock: VirtualTime, mx: FakeMX, started: datetime, what: str
) -> None:
    """The outage just ended: move the clock until ``mx`` has every email, print when
    the last one was delivered (the figure of docs/RELIABILITY.md), check the invariants."""
    recovered = clock()

    async def undelivered() -> bool:
        return len(mx.received) < len(run.sent)

    await clock.run_while(undelivered, recovered + HORIZON)
    delivered = await _delivered_at(run.pl)
    assert delivered > recovered
    print(
        f"\n{what}; last of {len(run.sent)} emails delivered {_minutes(delivered - recovered)} "
        f"after the outage ended ({_minutes(delivered - started)} after sending); clock "
        f"jumps at {', '.join(_minutes(j - started) for j in clock.jumps)}"
    )
    await run.finish(lambda: received_copies([mx]))


@DEFAULT_INSTALL
async def test_mx_outage_at_the_default_breaker_and_retry_schedule(
    postline_factory: Factory,
    fake_mx: FakeMX,
    topology: Topology,
    webhook_receiver: WebhookReceiver,
) -> None:
    run, clock = await _start(postline_factory, topology, webhook_receiver)
    await fake_mx.stop()  # every MX of dest.test refuses connections
    started = clock()
    for i in range(EMAILS):
        await run.send([f"mx{i}@dest.test"])

    await clock.run_until(started + MX_OUTAGE)
    rows = await _attempt_rows(run.pl)
    policy = BreakerPolicy()
    failed = [r for r in rows if r[0] != "breaker"]
    # The breaker opened at its threshold: the rest waited without connecting, and each
    # trial while the MX was down (one every open period) failed and reopened it.
    assert ("breaker", "deferred") in rows
    assert all(status == "deferred" for _, status in rows), rows
    openings = MX_OUTAGE // timedelta(seconds=policy.open_seconds)
    assert policy.failure_threshold <= len(failed), rows
    assert len(failed) <= EMAILS + openings * policy.half_open_trials, rows
    assert run.pl.services.engine.breakers.view("dest.test").state is not BreakerState.CLOSED

    await fake_mx.start()  # the outage is over: the same address and port again
    what = f"MX down {_minutes(MX_OUTAGE)}: {len(failed)} failed transactions, breaker opened"
    await _until_delivered(run, clock, fake_mx, started, what)


@DEFAULT_INSTALL
async def test_dns_outage_at_the_default_retry_schedule_and_resolver_lifetime(
    postline_factory: Factory,
    fake_dns: FakeDNS,
    fake_mx: FakeMX,
    topology: Topology,
    webhook_receiver: WebhookReceiver,
) -> None:
    fake_dns.add_mx("nomx.test", (10, "mx.nomx.test"))
    fake_dns.add_a("mx.nomx.test", fake_mx.host)
    fake_dns.timeout("nomx.test")  # the MX query is never answered
    run, clock = await _start(postline_factory, topology, webhook_receiver)
    started = clock()
    for i in range(2):
        await run.send([f"dns{i}@nomx.test"])

    await clock.run_until(started + DNS_OUTAGE)
    rows = await _attempt_rows(run.pl)
    # DNS failures are ours, not the destination's: deferred, and never a breaker's wait.
    assert rows and all(row == ("local", "deferred") for row in rows), rows
    assert fake_mx.connections == 0

    fake_dns.restore("nomx.test")
    what = f"DNS down {_minutes(DNS_OUTAGE)}: {len(rows) // 2} failed attempts per email"
    await _until_delivered(run, clock, fake_mx, started, what)
