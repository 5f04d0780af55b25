"""What every fault scenario shares: the topologies, Postline tuned for faults, and the
ending (stop Postline, then the crash-suite invariants of ``tests/crash/invariants.py``).

A scenario sends several emails while a fault is active, waits until each has met it,
ends the fault, and insists that everything finishes: every recipient with its expected
outcome, received by its MX, and every terminal event acknowledged by a webhook
receiver that was up all along (the webhook outage scenario brings its own).

The fixtures (``topology``, ``webhook_receiver``) reach every test of this directory
through ``tests/faults/conftest.py``; a test that does not ask for them gets neither.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import func, select

from postline.delivery.breaker import BreakerPolicy, Breakers
from postline.store.schema import events, webhook_deliveries
from tests.crash.invariants import (
    Expectation,
    InvariantReport,
    acknowledged_ids,
    check_invariants,
)
from tests.harness import polling
from tests.harness.postline import Factory, PostlineUnderTest
from tests.harness.receiver import WebhookReceiver

__all__ = [
    "FAULT_SETTINGS",
    "FaultRun",
    "Topology",
    "every_attempt",
    "fault_modes",
    "poll",
    "topology",
    "webhook_receiver",
]

CONNECT_TIMEOUT = 1.0
COMMAND_TIMEOUT = 1.0
#: One failed attempt against a single MX address may take the connect timeout and a
#: command timeout; the rest is room for a loaded machine. An attempt that takes longer
#: hung past the timeout.
ATTEMPT_BOUND_MS = int((CONNECT_TIMEOUT + 2 * COMMAND_TIMEOUT + 3.0) * 1000)

#: Short timeouts and retries so a fault costs seconds.
FAULT_SETTINGS: dict[str, Any] = {
    "smtp_connect_timeout": CONNECT_TIMEOUT,
    "smtp_command_timeout": COMMAND_TIMEOUT,
    "lease_seconds": 10,
    "retry_schedule": "0.2",
    "webhook_allow_private": True,
    "webhook_retry_schedule": "0.2,0.2,0.2",
}

#: How long a phase of a scenario may take before the test gives up on it.
PHASE_DEADLINE = 20.0


@dataclass(frozen=True)
class Topology:
    """Where Postline keeps its state: settings overrides, and how the check reads it."""

    name: str
    settings: dict[str, Any]
    queue_url: str = "embedded"
    queue_prefix: str = "postline"


@pytest.fixture(params=["sqlite", "pg_redis"])
def topology(request: pytest.FixtureRequest) -> Topology:
    """SQLite + the embedded queue (the default install), then PostgreSQL + Redis (skipped
    with the reason when they are not running, failed in CI: tests/conftest.py)."""
    if request.param == "sqlite":
        return Topology("sqlite", {})
    database_url = str(request.getfixturevalue("postgres_url"))
    redis_url = str(request.getfixturevalue("redis_url"))
    prefix = str(request.getfixturevalue("redis_prefix"))
    return Topology(
        "pg_redis",
        {"database_url": database_url, "queue_url": redis_url, "queue_prefix": prefix},
        queue_url=redis_url,
        queue_prefix=prefix,
    )


@pytest_asyncio.fixture
async def webhook_receiver() -> AsyncIterator[WebhookReceiver]:
    """A receiver that acknowledges everything, for the invariant "no event lost"."""
    async with WebhookReceiver() as receiver:
        yield receiver


def fault_modes(argname: str, modes: Sequence[str], *, pg_redis: str) -> pytest.MarkDecorator:
    """Parametrize a test over ``(topology, argname)``: every one of ``modes`` on the default
    install, and the one named ``pg_redis`` on PostgreSQL + Redis too.

    The store and the queue see the same deferrals whichever mode of a fault caused them,
    so one mode on the second topology covers it (the fault suite's time budget)."""
    cases = [("sqlite", mode) for mode in modes] + [("pg_redis", pg_redis)]
    return pytest.mark.parametrize(("topology", argname), cases, indirect=["topology"])


async def poll(
    check: Callable[[], Awaitable[Any]], *, what: str, timeout: float = PHASE_DEADLINE
) -> Any:
    """``tests.harness.polling.poll`` with a phase's deadline unless told otherwise."""
    return await polling.poll(check, timeout=timeout, what=what)


def every_attempt(detail: dict[str, Any]) -> list[dict[str, Any]]:
    """The timeline rows of every recipient of one email (GET /v1/emails/{id})."""
    return [row for r in detail["recipients"] for row in r["timeline"]]


def relaxed_breakers() -> Breakers:
    """Breakers that never open (warm-up keeps their policy).

    Every fault here fails transactions fast enough to open a real breaker, which
    then holds the destination for five minutes plus up to 30 s of jitter: by design,
    and tested in tests/integration/test_breaker_engine.py. The fault suite is about
    what happens to the mail, so it keeps the breakers out of the timing.
    """
    return Breakers(BreakerPolicy(failure_threshold=1_000_000))


@dataclass
class FaultRun:
    """One Postline under a fault, and what was sent to it."""

    pl: PostlineUnderTest
    topology: Topology
    receiver: WebhookReceiver | None
    expectation: Expectation = field(default_factory=Expectation)
    sent: list[str] = field(default_factory=list)

    @classmethod
    async def start(
        cls,
        postline_factory: Factory,
        topology: Topology,
        receiver: WebhookReceiver | None,
        *,
        defaults: bool = False,
        **overrides: Any,
    ) -> FaultRun:
        """Postline with its engine running, the breakers out of the way, and ``receiver``
        (if any) registered for every event before the first email.

        ``defaults``: neither ``FAULT_SETTINGS`` nor the relaxed breakers, for a scenario
        of the real policies; it passes its own breakers and clock in ``overrides``
        (``postline_factory``'s ``breakers`` and ``clock``: tests/faults/virtual_time.py).
        """
        tuned = {} if defaults else {**FAULT_SETTINGS, "breakers": relaxed_breakers()}
        settings = {**tuned, **topology.settings, **overrides}
        pl = await postline_factory(**settings)
        run = cls(pl, topology, receiver)
        await run.engine_started()
        if receiver is not None:
            response = await pl.client.post(
                "/v1/webhooks", json={"url": receiver.url, "events": ["*"]}, headers=pl.auth()
            )
            assert response.status_code == 201, response.text
        return run

    async def engine_started(self) -> None:
        """Wait until the engine has warmed its breakers up and leases jobs."""
        engine = self.pl.services.engine

        async def started() -> bool:
            return engine.running

        await poll(started, what="the engine to start", timeout=10)

    async def send(self, to: list[str], outcome: str = "delivered", **body: Any) -> str:
        sent = await self.pl.send(to=to, **body)
        self.expectation.add(sent["id"], to, outcome)
        self.sent.append(sent["id"])
        return str(sent["id"])

    async def send_many(self, count: int, domains: Iterable[str], tag: str) -> list[str]:
        """``count`` emails, two recipients each, spread over ``domains`` (one job each)."""
        names = list(domains)
        ids = []
        for i in range(count):
            domain = names[i % len(names)]
            ids.append(await self.send([f"{tag}{i}a@{domain}", f"{tag}{i}b@{domain}"]))
        return ids

    async def wait_each(
        self,
        ids: Iterable[str],
        predicate: Callable[[dict[str, Any]], bool],
        what: str,
        timeout: float = PHASE_DEADLINE,
    ) -> list[dict[str, Any]]:
        return [await self.pl.wait_for(i, predicate, timeout, what) for i in ids]

    async def wait_each_met_the_fault(
        self, ids: Iterable[str], timeout: float = PHASE_DEADLINE
    ) -> list[dict[str, Any]]:
        """Until every recipient of each email has at least one deferred attempt."""
        return await self.wait_each(
            ids,
            lambda d: all(
                any(t["status"] == "deferred" for t in r["timeline"]) for r in d["recipients"]
            ),
            "a deferral of every recipient",
            timeout,
        )

    async def wait_all_final(self, timeout: float = PHASE_DEADLINE) -> list[dict[str, Any]]:
        return [await self.pl.wait_until_final(i, timeout) for i in self.sent]

    async def webhooks_settled(self) -> bool:
        """Every event fanned out and no delivery of it still pending."""
        async with self.pl.services.db.read() as conn:
            undispatched = (
                await conn.execute(
                    select(func.count()).select_from(events).where(events.c.dispatched_at.is_(None))
                )
            ).scalar_one()
            pending = (
                await conn.execute(
                    select(func.count())
                    .select_from(webhook_deliveries)
                    .where(webhook_deliveries.c.status == "pending")
                )
            ).scalar_one()
        return int(undispatched) == 0 and int(pending) == 0

    async def assert_each_event_acknowledged_once(self) -> None:
        """Every event of the outbox (not only the terminal ones the invariants look at)
        was acknowledged by the receiver exactly once, and nothing else was."""
        assert self.receiver is not None
        async with self.pl.services.db.read() as conn:
            written = {str(row.id) for row in await conn.execute(select(events.c.id))}
        acknowledged = acknowledged_ids(self.receiver)
        assert set(acknowledged) == written, sorted(set(acknowledged) ^ written)[:10]
        twice = {i: n for i, n in acknowledged.items() if n != 1}
        assert twice == {}, f"events acknowledged more than once: {twice}"

    async def finish(
        self, received: Callable[[], Mapping[str, int]], *, in_flight_bound: int = 0
    ) -> InvariantReport:
        """Everything final and every webhook sent, then Postline stopped and checked.

        ``received`` counts what the MX servers got, asked once Postline has stopped."""
        await self.wait_all_final()
        if self.receiver is not None:
            await poll(self.webhooks_settled, what="every webhook to be delivered")
            await self.assert_each_event_acknowledged_once()
        await self.pl.stop_engine()
        report = await check_invariants(
            database_url=self.pl.settings.database_url,
            expectation=self.expectation,
            received=received(),
            webhook_event_ids=self.receiver,
            spool=self.pl.settings.spool_path,
            in_flight_bound=in_flight_bound,
            queue_url=self.topology.queue_url,
            queue_prefix=self.topology.queue_prefix,
        )
        print(f"\n[{self.topology.name}] {report.summary()}")
        assert report.lost_emails == 0 and report.lost_events == 0, report.summary()
        assert report.webhook_duplicates == 0, report.summary()
        return report
