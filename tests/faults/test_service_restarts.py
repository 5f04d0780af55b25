"""PostgreSQL and Redis going away during a run, ending with the crash-suite invariants.

tests/acceptance/test_scale_out.py already runs the scale-out deployment (``postline
api`` + ``postline worker`` as processes) through Redis restarting empty and through
PostgreSQL dropping every connection, each on its own, and checks the invariants at
the end of each. The scenarios here are the ones it does not cover, run in-process so
they cost seconds:

- the default queue on PostgreSQL (``embedded``: jobs in the same database, leased,
  acked and recorded in its transactions) while every connection to the database is
  terminated, round after round;
- both services failing in the same run: Redis killed (SIGKILL, a crash, not a clean
  stop) and restarted empty, with PostgreSQL's connections terminated while Redis is
  down and again once it is back.

"Restarting PostgreSQL" is ``pg_terminate_backend`` of every connection to the test's
own database: the server is shared by every test, so restarting it for real would break
the others. For Postline the two look the same: every pooled connection dies at once,
mid-transaction or idle, and new ones are accepted.

Delivery is at least once: a drop that lands between an MX's 250 and the commit of its
outcome costs that delivery its record, so it is sent again. Such duplicates are
counted and bounded by what was in flight (concurrency times faults); a lost email, a
missing event, or a recipient left waiting fails the test.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from postline.housekeeping import housekeeping
from tests.acceptance.harness import RedisServer
from tests.acceptance.test_scale_out import (
    Destinations,
    addresses,
    destinations,
    terminate_backends,
)
from tests.crash.invariants import InvariantReport, check_invariants, received_copies
from tests.faults.scenario import FaultRun, Topology, poll
from tests.harness.postline import Factory
from tests.harness.private_redis import private_redis
from tests.harness.receiver import WebhookReceiver

__all__ = ["destinations", "private_redis"]  # fixtures, imported for pytest

pytestmark = [pytest.mark.postgres]

CONCURRENCY = 8
#: Housekeeping often, and a lost job rebuilt for recipients waiting longer than a
#: second: recovery in seconds rather than the production minute.
RECOVERY = {"housekeeping_interval": 0.5, "requeue_grace_seconds": 1.0}


async def start_run(
    postline_factory: Factory,
    topology: Topology,
    receiver: WebhookReceiver,
    destinations: Destinations,
    **overrides: Any,
) -> FaultRun:
    """A fault run delivering to ``destinations``, CONCURRENCY deliveries at a time: enough
    in flight that every drop lands with deliveries open."""
    return await FaultRun.start(
        postline_factory,
        topology,
        receiver,
        delivery_port=destinations.port,
        concurrency=CONCURRENCY,
        **overrides,
    )


@contextlib.contextmanager
def housekeeping_running(run: FaultRun) -> Iterator[None]:
    """Housekeeping beside the engine, as in every worker: it rebuilds lost Redis jobs.

    It stops with the engine (the same stop event), which ``run.finish`` sets."""
    task = asyncio.create_task(housekeeping(run.pl.services, run.pl.stop), name="housekeeping")
    try:
        yield
    finally:
        if not task.done():
            task.cancel()


async def send_round(run: FaultRun, recipients: list[str]) -> None:
    """One email per recipient, in one batch request: all are queued at once."""
    body = [
        {"from": "Sender <sender@example.test>", "to": address, "subject": "Hi", "text": "Hi"}
        for address in recipients
    ]
    response = await run.pl.client.post("/v1/emails/batch", json=body, headers=run.pl.auth())
    assert response.status_code == 202, response.text
    for email, address in zip(response.json()["data"], recipients, strict=True):
        run.expectation.add(email["id"], [address], "delivered")
        run.sent.append(email["id"])


async def received_at_least(network: Destinations, count: int) -> None:
    async def enough() -> bool:
        return network.total() >= count

    await poll(enough, what=f"{count} messages received")


def summarize(name: str, report: InvariantReport, **facts: object) -> None:
    """One line for docs/RELIABILITY.md."""
    details = ", ".join(f"{key}={value}" for key, value in facts.items())
    print(f"\n{name}: {details}; {report.summary()}")


async def test_embedded_queue_on_postgres_survives_repeated_connection_drops(
    postgres_url: str,
    postline_factory: Factory,
    destinations: Destinations,
    webhook_receiver: WebhookReceiver,
) -> None:
    topology = Topology("pg_embedded", {"database_url": postgres_url})
    run = await start_run(postline_factory, topology, webhook_receiver, destinations)
    destinations.stall(0.05)  # every drop lands with deliveries open
    rounds, per_round = 4, 25
    terminated = []
    for round_ in range(rounds):
        # Sent after the previous drop: the API must answer on fresh connections.
        await send_round(run, addresses(per_round, start=round_ * per_round))
        await received_at_least(destinations, round_ * per_round + 10)
        terminated.append(await terminate_backends(postgres_url))
    assert all(terminated), f"no connection to terminate in some round: {terminated}"
    await send_round(run, addresses(10, start=rounds * per_round))

    bound = CONCURRENCY * rounds
    report = await finish(run, destinations, in_flight_bound=bound)
    summarize(
        "PostgreSQL connections dropped, embedded queue",
        report,
        connections_terminated=terminated,
    )


async def test_redis_crash_and_postgres_drops_in_one_run(
    postgres_url: str,
    private_redis: RedisServer,
    postline_factory: Factory,
    destinations: Destinations,
    webhook_receiver: WebhookReceiver,
) -> None:
    redis = private_redis
    topology = Topology(
        "pg_redis",
        {"database_url": postgres_url, "queue_url": redis.url, "queue_prefix": "postline"},
        queue_url=redis.url,
        queue_prefix="postline",
    )
    run = await start_run(postline_factory, topology, webhook_receiver, destinations, **RECOVERY)
    destinations.stall(0.1)  # jobs still wait in Redis when it dies
    with housekeeping_running(run):
        before = addresses(40)
        await send_round(run, before)
        await received_at_least(destinations, 5)

        await redis.aclose()  # SIGKILL: every job it held is gone
        received_at_crash = destinations.total()
        # Neither received nor in the engine's hands: jobs only Redis held, now lost.
        lost_jobs = len(before) - received_at_crash - CONCURRENCY
        assert lost_jobs > 0, "Redis held no waiting job when it died: nothing tested"
        terminated = [await terminate_backends(postgres_url)]
        # Durable in PostgreSQL before the queue is touched: still a 202 with Redis down.
        await send_round(run, addresses(20, start=len(before)))

        await redis.start()  # the same port, empty
        terminated.append(await terminate_backends(postgres_url))
        await send_round(run, addresses(20, start=len(before) + 20))
        assert all(terminated), f"no connection to terminate: {terminated}"
        # The crash lost the jobs in flight, so their rebuilt copies may go out while the
        # first ones are still being sent; every drop may cost in-flight records.
        bound = CONCURRENCY * (1 + len(terminated))
        report = await finish(run, destinations, in_flight_bound=bound)
    summarize(
        "Redis SIGKILLed and restarted empty, PostgreSQL connections dropped twice",
        report,
        received_at_crash=received_at_crash,
        jobs_lost_with_redis_at_least=lost_jobs,
        connections_terminated=terminated,
    )


async def finish(run: FaultRun, network: Destinations, *, in_flight_bound: int) -> InvariantReport:
    """Everything final and every event acknowledged, then Postline stopped and checked.

    Unlike ``FaultRun.finish`` a webhook may be acknowledged twice: a dropped connection
    can cost a sent webhook its record, like a delivery (the invariants count those)."""
    await run.wait_all_final(timeout=45)
    await poll(run.webhooks_settled, what="every webhook to be delivered")
    await run.pl.stop_engine()
    return await check_invariants(
        database_url=run.pl.settings.database_url,
        expectation=run.expectation,
        received=received_copies(network.servers.values()),
        webhook_event_ids=run.receiver,
        spool=run.pl.settings.spool_path,
        in_flight_bound=in_flight_bound,
        queue_url=run.topology.queue_url,
        queue_prefix=run.topology.queue_prefix,
    )
