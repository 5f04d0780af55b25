"""Scale-out as deployed: ``postline api`` and ``postline worker`` processes sharing one
PostgreSQL database, one Redis queue and the database spool, under the failures such a
deployment meets: a worker killed mid-run, Redis restarting empty, PostgreSQL dropping
every connection.

Postline runs as real subprocesses; what it talks to (the destination MX servers, DNS, a
webhook receiver) runs in this test's event loop, so nothing here may block the loop.
Delivery is at least once: a message an MX accepted just before its sender died is sent
again by another worker, so duplicates are counted and bounded by what was in flight,
never simply forbidden; a lost email, a missing or doubled event, or a process that gives
up is a failure.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from tests.acceptance.conftest import Launcher
from tests.acceptance.harness import FINAL, Install, RedisServer, Server, auth, shared_env
from tests.conftest import PG_ADMIN_DSN
from tests.crash.invariants import (
    DATABASE_SPOOL,
    Expectation,
    InvariantReport,
    assert_each_received,
    assert_recorded_once,
    check_invariants,
    event_ids,
    received_copies,
)
from tests.crash.takeover import first_redelivery
from tests.harness.fake_dns import FakeDNS
from tests.harness.fake_mx import FakeMX, FakeMXFactory
from tests.harness.private_redis import private_redis
from tests.integration.test_webhook_dispatch import TrackingReceiver

__all__ = ["private_redis"]  # a fixture, imported for pytest

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.solo]

#: Two destination domains, each with its own MX (same port, different loopback address:
#: Postline connects to every MX on POSTLINE_DELIVERY_PORT).
DESTINATIONS = {"alpha.test": "127.0.0.2", "beta.test": "127.0.0.3"}

RecordProperty = Callable[[str, object], None]


# ---------------------------------------------------------------------------- fixtures


@dataclass
class RedisQueueKeys:
    """The shared Redis queue under a key prefix of this test's own, read directly."""

    url: str
    prefix: str
    client: aioredis.Redis

    async def jobs(self) -> list[dict[str, Any]]:
        """Every job in ``{prefix}:jobs`` (pending or leased), decoded."""
        raw = await self.client.hgetall(f"{self.prefix}:jobs")
        return [json.loads(value) for value in raw.values()]


@pytest_asyncio.fixture
async def redis_queue(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisQueueKeys]:
    """The shared test Redis under a fresh key prefix, with a client to look inside."""
    client = aioredis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=5)
    try:
        yield RedisQueueKeys(redis_url, redis_prefix, client)
    finally:
        await client.aclose()


@dataclass
class Destinations:
    """The destination domains' MX servers, and what they received, by recipient."""

    servers: dict[str, FakeMX]

    @property
    def port(self) -> int:
        return next(iter(self.servers.values())).port

    def stall(self, seconds: float) -> None:
        """Hold each message this long before the final reply to DATA: a slow remote MX."""
        for mx in self.servers.values():
            mx.stall("data", seconds)

    def total(self) -> int:
        return sum(len(mx.received) for mx in self.servers.values())

    def copies(self) -> Counter[str]:
        """How many times each recipient address was received, over every MX."""
        return received_copies(self.servers.values())

    async def wait_total(self, count: int, deployment: Deployment, timeout: float) -> None:
        """Poll (with a deadline) until the MX servers received ``count`` messages in all."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.total() < count:
            deployment.check_running()
            if loop.time() > deadline:
                raise AssertionError(
                    f"the MX servers received {self.total()} messages, not {count}, "
                    f"within {timeout:g}s\n{deployment.describe()}"
                )
            await asyncio.sleep(0.05)


@pytest_asyncio.fixture
async def destinations(fake_dns: FakeDNS, fake_mx_factory: FakeMXFactory) -> Destinations:
    servers = await fake_mx_factory.group(*DESTINATIONS.values())
    for (domain, ip), mx in zip(DESTINATIONS.items(), servers, strict=True):
        assert mx.host == ip
        fake_dns.add_mx(domain, (10, f"mx.{domain}"))
        fake_dns.add_a(f"mx.{domain}", ip)
    return Destinations(dict(zip(DESTINATIONS, servers, strict=True)))


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[TrackingReceiver]:
    hooks = TrackingReceiver()
    await hooks.start()
    yield hooks
    await hooks.stop()


@dataclass
class Rig:
    """What every process test here starts from: a fresh install, the launcher of its
    processes, the fake network (DNS and the destinations' MX servers) and pytest's
    ``record_property``. One fixture, so that a test names only what varies: its storage."""

    install: Install
    launch: Launcher
    dns: FakeDNS
    destinations: Destinations
    record: RecordProperty

    def use_shared_storage(self, database_url: str, queue_url: str, prefix: str) -> None:
        """Every process of the install on this database, this Redis queue (under
        ``prefix``) and the database spool, on the fake network: ``deployment_env``."""
        self.install.extra.update(
            deployment_env(
                database_url=database_url,
                queue_url=queue_url,
                prefix=prefix,
                dns=self.dns,
                destinations=self.destinations,
            )
        )


@pytest.fixture
def rig(
    install: Install,
    launch: Launcher,
    fake_dns: FakeDNS,
    destinations: Destinations,
    record_property: RecordProperty,
) -> Rig:
    return Rig(install, launch, fake_dns, destinations, record_property)


# ---------------------------------------------------------------------------- deployment


def deployment_env(
    *, database_url: str, queue_url: str, prefix: str, dns: FakeDNS, destinations: Destinations
) -> dict[str, str]:
    """Shared storage, the fake network, and timings short enough to recover in seconds:
    housekeeping runs every second and rebuilds a lost job for recipients older than two
    seconds. The lease and the heartbeat are left at their defaults: a dead worker's
    jobs are taken over once its heartbeat has stopped (within 15 + 5 s)."""
    return {
        **shared_env(database_url, queue_url, prefix),
        "POSTLINE_DNS_NAMESERVERS": dns.nameserver,
        "POSTLINE_DELIVERY_PORT": str(destinations.port),
        "POSTLINE_RETRY_SCHEDULE": "1",
        "POSTLINE_SMTP_CONNECT_TIMEOUT": "2",
        "POSTLINE_SMTP_COMMAND_TIMEOUT": "3",
        "POSTLINE_HOUSEKEEPING_INTERVAL": "1",
        "POSTLINE_REQUEUE_GRACE_SECONDS": "2",
        "POSTLINE_SHUTDOWN_TIMEOUT": "5",
        "POSTLINE_WEBHOOK_ALLOW_PRIVATE": "true",
        # A webhook delivery leased by a dead worker is retried after 2 * 2 + 10 s.
        "POSTLINE_WEBHOOK_TIMEOUT": "2",
        "POSTLINE_WEBHOOK_RETRY_SCHEDULE": "1,1,1,1,1",
    }


@dataclass
class Deployment:
    api: Server
    key: str
    workers: list[Server]
    owners: list[str]  # each worker's lease owner, in the order of ``workers``
    killed: list[Server] = field(default_factory=list)
    redis: RedisServer | None = None  # a private Redis, shown in failure messages

    @property
    def processes(self) -> list[Server]:
        """The processes that must stay up: every one the test did not kill on purpose."""
        return [p for p in (self.api, *self.workers) if p not in self.killed]

    async def kill(self, worker: Server) -> None:
        """SIGKILL ``worker`` and reap it: it dies holding whatever it held."""
        self.killed.append(worker)
        worker.proc.kill()
        assert await worker.wait_exit(10) == -signal.SIGKILL, worker.describe()

    def check_running(self) -> None:
        dead = [p for p in self.processes if not p.running]
        assert not dead, f"{len(dead)} process(es) exited\n{self.describe()}"

    def describe(self, tail: int = 40) -> str:
        """A process that exited in full; a running one by the end of its stderr (the rest
        of a worker's log is one line per delivery)."""
        parts = []
        for process in self.processes:
            if not process.running:
                parts.append(process.describe())
                continue
            lines = "\n".join(process.stderr[-tail:])
            command = " ".join(process.args)
            parts.append(f"$ postline {command} (pid {process.pid}, running)\n{lines}")
        if self.redis is not None:
            state = "running" if self.redis.running else "not running"
            log = "\n".join(self.redis.log().splitlines()[-tail:])
            parts.append(f"$ redis-server --port {self.redis.port} ({state})\n{log}")
        return "\n\n".join(parts)


async def deploy(
    rig: Rig, *, workers: int, concurrency: int, redis: RedisServer | None = None
) -> Deployment:
    """Migrate and add the sending domain as an operator would, then start one API
    process (which creates the first admin key) and ``workers`` worker processes."""
    install = rig.install
    (await install.acli("migrate")).assert_ok()
    (await install.acli("domains", "add", "example.test")).assert_ok()
    api = await rig.launch(install, "api")
    key = await api.admin_key()
    await api.ready()
    started = [
        await rig.launch(install, "worker", "--concurrency", str(concurrency))
        for _ in range(workers)
    ]
    owners = [await worker.worker_ready() for worker in started]
    assert len(set(owners)) == len(owners), owners
    return Deployment(api, key, started, owners, redis=redis)


def addresses(count: int, start: int = 0) -> list[str]:
    """Distinct recipients spread over every destination domain."""
    domains = list(DESTINATIONS)
    return [f"user{i:04d}@{domains[i % len(domains)]}" for i in range(start, start + count)]


async def send_all(
    api: Server, key: str, recipients: Sequence[str], batch: int = 100
) -> dict[str, str]:
    """Send one email per recipient in batches; email id -> recipient."""
    sent: dict[str, str] = {}
    for offset in range(0, len(recipients), batch):
        chunk = recipients[offset : offset + batch]
        accepted = await api.send_batch(key, [{"to": address} for address in chunk])
        for email, address in zip(accepted, chunk, strict=True):
            assert email["recipients"] == [{"address": address, "status": "queued"}], email
            sent[email["id"]] = address
    return sent


async def wait_all_final(
    deployment: Deployment, ids: Iterable[str], timeout: float
) -> dict[str, str]:
    """Poll the send log (with a deadline) until every one of ``ids`` is final."""
    wanted = set(ids)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        deployment.check_running()
        log = await deployment.api.list_emails(deployment.key)
        statuses = {e["id"]: e["status"] for e in log if e["id"] in wanted}
        waiting = Counter(s for s in statuses.values() if s not in FINAL)
        missing = wanted - set(statuses)
        if not waiting and not missing:
            return statuses
        if loop.time() > deadline:
            raise AssertionError(
                f"after {timeout:g}s: {len(missing)} emails missing from the log, "
                f"{sum(waiting.values())} not final {dict(waiting)}\n"
                f"{deployment.describe()}"
            )
        await asyncio.sleep(0.5)


async def terminate_backends(database_url: str) -> int:
    """Drop every connection Postline holds to its database, as a failover or restart would."""
    name = database_url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    try:
        rows = await admin.fetch(
            "SELECT pg_terminate_backend(pid) AS done FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
    finally:
        await admin.close()
    return sum(1 for row in rows if row["done"])


async def check_delivered_invariants(
    database_url: str,
    sent: dict[str, str],
    destinations: Destinations,
    *,
    queue_url: str,
    queue_prefix: str,
    in_flight_bound: int,
) -> InvariantReport:
    """The crash-suite invariants (tests/crash/invariants.py) for a run whose every email
    (id -> its one recipient) was to be delivered; the deployment must be idle."""
    return await check_invariants(
        database_url=database_url,
        expectation=delivered_expectation(sent),
        received=destinations.copies(),
        webhook_event_ids=None,
        spool=DATABASE_SPOOL,
        in_flight_bound=in_flight_bound,
        queue_url=queue_url,
        queue_prefix=queue_prefix,
    )


def delivered_expectation(sent: dict[str, str]) -> Expectation:
    """What the invariants expect of a run whose every email (id -> its one recipient)
    was to be delivered."""
    expectation = Expectation()
    for email_id, address in sent.items():
        expectation.add(email_id, [address], "delivered")
    return expectation


def report(record: RecordProperty, summary: str, **measures: object) -> None:
    """Print what a run measured and keep it in the JUnit report (pytest's ``record_property``):
    duplicates and recovery times are numbers to watch across runs, not pass/fail limits."""
    for name, value in measures.items():
        record(name, value)
    print(f"\n{summary}")


# ---------------------------------------------------------------------------- tests


async def test_sigkill_one_of_two_workers_mid_run_loses_nothing(
    postgres_url: str, redis_queue: RedisQueueKeys, rig: Rig, receiver: TrackingReceiver
) -> None:
    emails = 500
    destinations = rig.destinations
    destinations.stall(0.05)  # a slow MX: the kill lands with deliveries open
    rig.use_shared_storage(postgres_url, redis_queue.url, redis_queue.prefix)
    deployment = await deploy(rig, workers=2, concurrency=8)
    api, key = deployment.api, deployment.key
    created = await api.client.post(
        "/v1/webhooks", json={"url": receiver.url, "events": ["email.delivered"]}, headers=auth(key)
    )
    assert created.status_code == 201, created.text

    loop = asyncio.get_running_loop()
    started = loop.time()
    recipients = addresses(emails)
    sent = await send_all(api, key, recipients)
    accepted_in = loop.time() - started
    await destinations.wait_total(80, deployment, timeout=30)

    victim, survivor = deployment.workers
    killed_at = loop.time()
    await deployment.kill(victim)
    received_at_kill = destinations.total()
    # Nothing changes the dead worker's jobs until its heartbeat runs out: read them now.
    held = [
        job for job in await redis_queue.jobs() if job.get("lease_owner") == deployment.owners[0]
    ]
    in_flight = sum(len(job["recipient_ids"]) for job in held)
    held_recipients = {sent[job["email_id"]].lower() for job in held}
    assert held, f"the worker held no job when killed: nothing was tested\n{victim.describe()}"
    assert received_at_kill < emails, "the kill came after the run: nothing was tested"

    statuses = await wait_all_final(deployment, sent, timeout=60)
    finished_in = loop.time() - killed_at
    held_ids = {job["email_id"] for job in held}
    takeover = first_redelivery(destinations.servers.values(), held_ids, killed_at)
    assert Counter(statuses.values()) == {"delivered": emails}, Counter(statuses.values())
    copies = assert_each_received(destinations.copies(), recipients)
    twice = {address: n for address, n in copies.items() if n > 1}
    await assert_recorded_once(postgres_url, recipients)

    expected_hooks = await event_ids(postgres_url, "email.delivered")
    assert len(expected_hooks) == emails, len(expected_hooks)
    await receiver.wait_until(
        lambda _: expected_hooks <= set(receiver.acknowledged),
        timeout=40,
        what="every email.delivered event acknowledged",
    )
    invented = set(receiver.acknowledged) - expected_hooks
    hooks_twice = sum(receiver.acknowledged.values()) - len(expected_hooks)
    report(
        rig.record,
        f"{emails} emails accepted in {accepted_in:.1f}s; SIGKILL after {received_at_kill} "
        f"received, the killed worker held {len(held)} jobs ({in_flight} recipients in "
        f"flight); SIGKILL to the first redelivery of its mail "
        f"{'-' if takeover is None else f'{takeover:.1f}s'}; {len(twice)} recipients received "
        f"twice; all final {finished_in:.1f}s after the kill; {hooks_twice} webhook events "
        "acknowledged more than once",
        received_at_kill=received_at_kill,
        in_flight_in_killed_worker=in_flight,
        received_twice=len(twice),
        final_after_kill_seconds=round(finished_in, 1),
        sigkill_to_redelivery_seconds=None if takeover is None else round(takeover, 1),
        webhook_duplicates=hooks_twice,
    )
    assert invented == set(), sorted(invented)[:10]
    # Only a message the dead worker had in flight can have been sent twice.
    assert len(twice) <= in_flight, (twice, in_flight)
    assert set(twice) <= held_recipients, sorted(set(twice) - held_recipients)
    assert survivor.running and api.running, deployment.describe()


async def test_redis_restarting_empty_loses_no_email(
    postgres_url: str, private_redis: RedisServer, rig: Rig
) -> None:
    concurrency = 4
    destinations = rig.destinations
    destinations.stall(0.2)  # jobs still wait in Redis when it goes
    rig.use_shared_storage(postgres_url, private_redis.url, "postline")
    deployment = await deploy(rig, workers=1, concurrency=concurrency, redis=private_redis)
    api, key = deployment.api, deployment.key
    (worker,) = deployment.workers
    before = addresses(40)
    sent = await send_all(api, key, before)
    await destinations.wait_total(5, deployment, timeout=20)

    assert await private_redis.stop() == 0, private_redis.log()
    received_at_stop = destinations.total()
    # Neither received nor in the worker's hands: jobs that only Redis held, now gone.
    lost_jobs = len(before) - received_at_stop - concurrency
    assert lost_jobs > 0, "Redis held no waiting job when it stopped: nothing was tested"
    # The email is durable in PostgreSQL before the queue is touched: still a 202.
    during = addresses(20, start=len(before))
    for address in during[:10]:
        email = await api.send(key, to=address)
        sent[email["id"]] = address
    sent |= await send_all(api, key, during[10:])
    await api.wait_for_line(r"queue unavailable after commit", stream="stderr")
    await worker.wait_for_line(r"leasing delivery jobs failed", stream="stderr")

    await private_redis.start()  # on the same port, empty
    loop = asyncio.get_running_loop()
    restarted = loop.time()
    statuses = await wait_all_final(deployment, sent, timeout=45)
    recovered_in = loop.time() - restarted
    recipients = before + during
    assert Counter(statuses.values()) == {"delivered": len(recipients)}, Counter(statuses.values())
    copies = assert_each_received(destinations.copies(), recipients)
    await assert_recorded_once(postgres_url, recipients)
    twice = {address: n for address, n in copies.items() if n > 1}
    # Only the deliveries in the worker's hands when Redis went can be sent twice.
    invariants = await check_delivered_invariants(
        postgres_url,
        sent,
        destinations,
        queue_url=private_redis.url,
        queue_prefix="postline",
        in_flight_bound=concurrency,
    )
    report(
        rig.record,
        f"{len(recipients)} emails, {received_at_stop} received before Redis stopped (at "
        f"least {lost_jobs} jobs lost with it), {len(during)} accepted while it was down; all "
        f"delivered {recovered_in:.1f}s after it came back empty; "
        f"{len(twice)} recipients received twice; {invariants.summary()}",
        jobs_lost_with_redis_at_least=lost_jobs,
        delivered_after_restart_seconds=round(recovered_in, 1),
        received_twice=len(twice),
        lost_emails=invariants.lost_emails,
    )
    deployment.check_running()


async def test_postgres_dropping_every_connection_loses_no_email(
    postgres_url: str, redis_queue: RedisQueueKeys, rig: Rig
) -> None:
    concurrency = 8
    destinations = rig.destinations
    destinations.stall(0.05)
    rig.use_shared_storage(postgres_url, redis_queue.url, redis_queue.prefix)
    deployment = await deploy(rig, workers=1, concurrency=concurrency)
    api, key = deployment.api, deployment.key
    sent: dict[str, str] = {}
    terminated: list[int] = []
    rounds, per_round = 4, 50
    for round_ in range(rounds):
        # Sent after the previous drop: the API must answer on fresh connections.
        sent |= await send_all(api, key, addresses(per_round, start=round_ * per_round))
        await destinations.wait_total(round_ * per_round + 20, deployment, timeout=30)
        terminated.append(await terminate_backends(postgres_url))
    assert all(terminated), f"no Postline connection to terminate in some round: {terminated}"
    sent |= await send_all(api, key, addresses(20, start=rounds * per_round))

    loop = asyncio.get_running_loop()
    last_drop = loop.time()
    statuses = await wait_all_final(deployment, sent, timeout=45)
    recovered_in = loop.time() - last_drop
    recipients = list(sent.values())
    assert Counter(statuses.values()) == {"delivered": len(recipients)}, Counter(statuses.values())
    copies = assert_each_received(destinations.copies(), recipients)
    await assert_recorded_once(postgres_url, recipients)
    twice = {address: n for address, n in copies.items() if n > 1}
    invariants = await check_delivered_invariants(
        postgres_url,
        sent,
        destinations,
        queue_url=redis_queue.url,
        queue_prefix=redis_queue.prefix,
        in_flight_bound=concurrency * rounds,
    )
    report(
        rig.record,
        f"{len(recipients)} emails; connections terminated per drop: {terminated}; "
        f"all delivered {recovered_in:.1f}s after the last drop; "
        f"{len(twice)} recipients received twice; {invariants.summary()}",
        connections_terminated=terminated,
        delivered_after_last_drop_seconds=round(recovered_in, 1),
        received_twice=len(twice),
        lost_emails=invariants.lost_emails,
    )
    # A drop can only cost the deliveries in flight at that moment their record (the MX
    # got them; the job is run again once its lease lapses).
    assert len(twice) <= concurrency * rounds, twice
    deployment.check_running()
