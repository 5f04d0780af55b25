"""SIGTERM in the middle of a busy run, on both topologies: every in-flight delivery is
finished or released within ``POSTLINE_SHUTDOWN_TIMEOUT``, the process exits 0,
nothing is left leased and its heartbeat is gone.

The run: 200 emails, most to a destination whose MX answers quickly, a few to one whose
MX holds every message past the drain timeout, so that the shutdown must both let
deliveries finish and give some back. After the exit the queue itself is read (the
embedded queue's lease columns; the Redis queue's ``leased`` set), then a new process
delivers everything, and the crash-suite invariants are checked. Lease and heartbeat
are at their defaults: a job the shutdown failed to release would only come back when
the heartbeat ran out, long after the checks below fail.

The embedded run is ``postline serve`` (SQLite, embedded queue, file spool); the shared
run is a ``postline worker`` beside ``postline api`` on PostgreSQL, Redis and the
database spool.
"""

from __future__ import annotations

import asyncio
import re
import signal
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from tests.acceptance.harness import Server, auth
from tests.acceptance.test_scale_out import (
    Deployment,
    Destinations,
    RecordProperty,
    RedisQueueKeys,
    Rig,
    check_delivered_invariants,
    delivered_expectation,
    destinations,
    redis_queue,
    report,
    rig,
    send_all,
    wait_all_final,
)
from tests.crash.invariants import InvariantReport, check_invariants

__all__ = ["destinations", "redis_queue", "rig"]  # fixtures, imported for pytest

SHUTDOWN_TIMEOUT = 2.0
#: Draining, closing connections and interpreter exit on a busy two-core machine: a bound
#: that catches a process hanging on, not a measure of speed. The drain is measured and
#: reported; what is asserted is its order and what it left.
EXIT_MARGIN = 60.0
CONCURRENCY = 8
FAST, SLOW = "alpha.test", "beta.test"  # the destinations of tests.acceptance.test_scale_out
EMAILS, STUCK = 200, 5  # STUCK of them to SLOW: fewer than CONCURRENCY, so fast mail flows


def shutdown_env() -> dict[str, str]:
    """A short drain; SMTP timeouts longer than it, so only the shutdown ends a stalled
    session; the lease and the heartbeat at their defaults."""
    return {
        "POSTLINE_CONCURRENCY": str(CONCURRENCY),
        "POSTLINE_SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT),
        "POSTLINE_SMTP_CONNECT_TIMEOUT": "5",
        "POSTLINE_SMTP_COMMAND_TIMEOUT": "20",
        "POSTLINE_RETRY_SCHEDULE": "1",
    }


def recipients() -> list[str]:
    """The stuck ones first: their sessions hang from the start while the fast mail flows,
    so SIGTERM finds both however quickly the fast mail goes (sent last, a fast enough
    engine had delivered the rest before the last of them stalled)."""
    fast = [f"user{i:03d}@{FAST}" for i in range(EMAILS - STUCK)]
    return [f"stuck{i}@{SLOW}" for i in range(STUCK)] + fast


@dataclass
class Shutdown:
    received_before: int  # messages the MX servers had when the signal went
    drain_seconds: float  # "shutting down" to "stopped", by the process's log
    exit_seconds: float  # the signal to the exit, seen from here
    released: int  # jobs the engine gave back unfinished (its "drained" log line)

    def report(
        self, record: RecordProperty, topology: str, jobs_left: int, result: InvariantReport
    ) -> None:
        report(
            record,
            f"{topology}: {EMAILS} emails, SIGTERM after {self.received_before} received; "
            f"drained in {self.drain_seconds:.1f}s (timeout {SHUTDOWN_TIMEOUT:g}s), exit 0 "
            f"after {self.exit_seconds:.1f}s, {self.released} jobs released, {jobs_left} left "
            f"and none leased; {result.summary()}",
            drain_seconds=round(self.drain_seconds, 2),
            exit_seconds=round(self.exit_seconds, 1),
            released=self.released,
            **result.measures(),
        )


async def sigterm_busy(process: Server, destinations: Destinations) -> Shutdown:
    """Wait until the run is busy (every slow email stuck in DATA, fast mail flowing and
    not done), SIGTERM ``process`` and check it drained and exited 0 in time."""
    fast, slow = destinations.servers[FAST], destinations.servers[SLOW]
    await slow.wait_for_connections(STUCK, timeout=30)
    await fast.wait_for_messages(20, timeout=30)
    received_before = destinations.total()
    assert received_before < EMAILS - STUCK, "the run was over before SIGTERM: nothing tested"

    loop = asyncio.get_running_loop()
    started = loop.time()
    process.signal(signal.SIGTERM)
    code = await process.wait_exit(SHUTDOWN_TIMEOUT + EXIT_MARGIN)
    elapsed = loop.time() - started
    assert code == 0, process.describe()
    assert not any("Traceback" in line for line in process.stderr), process.describe()
    # The drain, by the process's own clock: from the signal's log line to the last one,
    # with the deliveries given back in between. ``serve`` and each of its children log
    # "stopped"; the parent, which waits for its children, does so last.
    began = await logged_at(process, r"INFO postline shutting down$")
    gave_back = await logged_at(process, r"drained; released \d+ unfinished jobs$")
    ended = last_logged_at(process, r"INFO postline stopped$")
    assert began <= gave_back <= ended, process.describe()
    drain = ended - began
    match = await process.wait_for_line(r"drained; released (\d+) unfinished", stream="stderr")
    released = int(match.group(1))
    # The slow MX never answered: each of its deliveries was cut off and given back.
    assert released >= STUCK, process.describe()
    assert slow.received == [], slow
    return Shutdown(received_before, drain, elapsed, released)


async def logged_at(process: Server, pattern: str) -> float:
    """When ``process`` logged its first stderr line matching ``pattern`` (epoch seconds)."""
    match = await process.wait_for_line(rf"^(\S+ \S+) .*{pattern}", stream="stderr")
    return _epoch(match.group(1))


def last_logged_at(process: Server, pattern: str) -> float:
    """When ``process``, which has exited, logged its last stderr line matching
    ``pattern`` (epoch seconds)."""
    found = [m for line in process.stderr if (m := re.match(rf"^(\S+ \S+) .*{pattern}", line))]
    assert found, process.describe()
    return _epoch(found[-1].group(1))


def _epoch(logged: str) -> float:
    return datetime.strptime(logged, "%Y-%m-%d %H:%M:%S,%f").timestamp()


async def start_api(rig: Rig, *command: str) -> tuple[Server, str]:
    """``postline <command>`` (``serve`` or ``api``), which migrates and creates the first
    admin key, ready and with the sending domain added through the API (one process start
    less than the CLI); the process and its key."""
    api = await rig.launch(rig.install, *command)
    key = await api.admin_key()
    await api.ready()
    body = {"name": "example.test"}
    response = await api.client.post("/v1/domains", json=body, headers=auth(key))
    assert response.status_code == 201, f"{response.status_code} {response.text}"
    return api, key


async def send_busy_run(rig: Rig, api: Server, key: str) -> dict[str, str]:
    """Every email of the run sent through ``api``, the fast MX answering each in 50 ms
    and the slow one holding its messages far past the drain; email id -> recipient."""
    rig.destinations.servers[FAST].stall("data", 0.05)
    rig.destinations.servers[SLOW].stall("data", 120)
    return await send_all(api, key, recipients())


async def restart(rig: Rig, *command: str) -> Server:
    """``postline <command>`` started again, the MX servers answering at once now: the
    restart is not under test."""
    for mx in rig.destinations.servers.values():
        mx.clear()
    return await rig.launch(rig.install, *command)


async def finish_and_stop(deployment: Deployment, sent: Iterable[str], process: Server) -> None:
    """Every email of ``sent`` final (as ``deployment`` reports), then ``process`` stopped
    with SIGTERM: it must exit 0."""
    await wait_all_final(deployment, sent, timeout=45)
    process.signal(signal.SIGTERM)
    assert await process.wait_exit(SHUTDOWN_TIMEOUT + 30) == 0, process.describe()


def embedded_leases(database: Path) -> tuple[int, int, int]:
    """(jobs, leased jobs, worker heartbeats) in the embedded queue's tables, read with
    plain sqlite3."""
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        jobs, leased = conn.execute(
            "SELECT count(*), count(lease_owner) + count(lease_until) FROM queue_jobs"
        ).fetchone()
        (heartbeats,) = conn.execute("SELECT count(*) FROM worker_heartbeats").fetchone()
    finally:
        conn.close()
    return int(jobs), int(leased), int(heartbeats)


async def redis_leases(queue: RedisQueueKeys) -> tuple[int, int, int]:
    """(jobs, ids in the ``leased`` set, jobs naming a lease owner) in the Redis queue."""
    jobs = await queue.jobs()
    leased = int(await queue.client.zcard(f"{queue.prefix}:leased"))
    owned = sum(1 for job in jobs if job.get("lease_owner"))
    return len(jobs), leased, owned


async def test_sigterm_during_a_busy_serve_leaves_nothing_leased(rig: Rig) -> None:
    data_dir = rig.install.data_dir
    rig.install.extra.update(
        shutdown_env(),
        POSTLINE_DNS_NAMESERVERS=rig.dns.nameserver,
        POSTLINE_DELIVERY_PORT=str(rig.destinations.port),
    )
    server, key = await start_api(rig, "serve", "--no-sandbox")
    sent = await send_busy_run(rig, server, key)

    shutdown = await sigterm_busy(server, rig.destinations)
    jobs, leased, heartbeats = embedded_leases(data_dir / "postline.db")
    assert leased == 0, f"{leased} lease columns set on {jobs} jobs after a graceful shutdown"
    assert heartbeats == 0, f"{heartbeats} heartbeats left after a graceful shutdown"
    assert jobs >= STUCK, jobs

    again = await restart(rig, "serve", "--no-sandbox")
    await again.ready()
    await finish_and_stop(Deployment(again, key, workers=[], owners=[]), sent, again)

    result = await check_invariants(
        database_url=f"sqlite:///{data_dir / 'postline.db'}",
        expectation=delivered_expectation(sent),
        received=rig.destinations.copies(),
        webhook_event_ids=None,
        spool=data_dir / "spool",
        in_flight_bound=shutdown.released,
    )
    shutdown.report(rig.record, "serve", jobs, result)


@pytest.mark.postgres
@pytest.mark.redis
async def test_sigterm_during_a_busy_worker_leaves_nothing_leased(
    postgres_url: str, redis_queue: RedisQueueKeys, rig: Rig
) -> None:
    rig.use_shared_storage(postgres_url, redis_queue.url, redis_queue.prefix)
    rig.install.extra.update(shutdown_env())
    api, key = await start_api(rig, "api")
    worker = await rig.launch(rig.install, "worker")
    await worker.worker_ready()
    sent = await send_busy_run(rig, api, key)

    shutdown = await sigterm_busy(worker, rig.destinations)
    jobs, leased, owned = await redis_leases(redis_queue)
    assert (leased, owned) == (0, 0), f"{leased} leased, {owned} owned of {jobs} after SIGTERM"
    assert jobs >= STUCK, jobs
    inflight = await redis_queue.client.hvals(f"{redis_queue.prefix}:inflight")
    assert all(int(n) == 0 for n in inflight), inflight
    heartbeats = await redis_queue.client.keys(f"{redis_queue.prefix}:worker:*")
    assert heartbeats == [], f"heartbeats left after a graceful shutdown: {heartbeats}"

    again = await restart(rig, "worker")
    owner = await again.worker_ready()
    await finish_and_stop(Deployment(api, key, workers=[again], owners=[owner]), sent, again)

    result = await check_delivered_invariants(
        postgres_url,
        sent,
        rig.destinations,
        queue_url=redis_queue.url,
        queue_prefix=redis_queue.prefix,
        in_flight_bound=shutdown.released,
    )
    shutdown.report(rig.record, "worker", jobs, result)
