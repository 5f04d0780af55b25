"""What one ``EmbeddedQueue.lease`` costs with a backlog, on SQLite or PostgreSQL.

The engine leases whenever a delivery slot frees up, and on SQLite every lease
is a write transaction that holds up every other writer, so its cost is on the
hot path of delivery.

Creates a fresh database (a temporary SQLite file, or a PostgreSQL database
named ``postline_bench_<random>``, dropped at the end), runs the migrations and
enqueues ``--jobs`` due jobs: ``--big-share`` of them for one big destination,
the rest spread over the other ``--destinations - 1``, due times interleaved
over the last hour. Then it times ``--leases`` calls of ``lease(limit)``. After
each one, untimed, the leased jobs are acked and as many new jobs due now are
enqueued for the same destinations, as a delivery and an accept would: the
backlog stays at ``--jobs`` and the jobs in flight stay few, as in a running
engine. Jobs are enqueued through a second queue object, as an API process
would, so the queue being timed learns of destinations from the store only.

``--queue-module FILE`` times the ``EmbeddedQueue`` of another version instead,
e.g. ``git show 71b66b9:src/postline/queue/embedded.py > /tmp/fifo.py``.

Usage: .venv/bin/python bench/lease.py --store sqlite --jobs 100000 --destinations 50
       --limit 1 [--leases 500] [--big-share 0.9]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import random
import secrets
import statistics
import tempfile
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg

from postline.config import normalize_database_url
from postline.ids import new_id
from postline.queue import Job
from postline.queue.embedded import EmbeddedQueue
from postline.store.db import Database
from postline.store.migrate import upgrade_async
from postline.store.types import utcnow

PG_ADMIN = os.environ.get("POSTLINE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
WARM_UP = 20


def queue_class(path: str | None) -> Any:
    if path is None:
        return EmbeddedQueue
    spec = importlib.util.spec_from_file_location("bench_queue_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.EmbeddedQueue


def new_job(destination: str, due_in: float) -> Job:
    email_id = new_id("em_")
    return Job(
        id=new_id("job_"),
        email_id=email_id,
        destination=destination,
        recipient_ids=[new_id("rcp_")],
        body_ref=email_id,
        due_at=utcnow() + timedelta(seconds=due_in),
    )


def backlog(jobs: int, destinations: int, big_share: float) -> list[Job]:
    """The big destination's share, the rest round-robin over the small ones, shuffled."""
    names = ["big.test"] + [f"small{i}.test" for i in range(1, destinations)]
    big = jobs if destinations == 1 else round(jobs * big_share)
    owners = ["big.test"] * big + [names[1 + i % (destinations - 1)] for i in range(jobs - big)]
    random.Random(7).shuffle(owners)
    return [new_job(name, -3600 + 3600 * i / jobs) for i, name in enumerate(owners)]


async def measure(url: str, args: argparse.Namespace) -> None:
    await upgrade_async(url)
    db = Database(url)
    try:
        producer = EmbeddedQueue(db)
        jobs = backlog(args.jobs, args.destinations, args.big_share)
        for start in range(0, len(jobs), 1000):
            await producer.enqueue(jobs[start : start + 1000])
        queue = queue_class(args.queue_module)(db)
        timings: list[float] = []
        served: Counter[str] = Counter()
        for n in range(WARM_UP + args.leases):
            started = time.perf_counter()
            leased = await queue.lease("bench", args.limit, 300)
            elapsed = time.perf_counter() - started
            if n >= WARM_UP:
                timings.append(elapsed)
                served.update(job.destination for job in leased)
            for job in leased:
                await queue.ack(job)
            await producer.enqueue([new_job(job.destination, 0) for job in leased])
    finally:
        await db.close()
    ms = sorted(t * 1000 for t in timings)
    print(
        f"store={args.store} jobs={args.jobs} destinations={args.destinations} "
        f"limit={args.limit} leases={args.leases} queue={args.queue_module or 'current'}"
    )
    print(
        f"ms per lease: mean {statistics.fmean(ms):.2f}  median {statistics.median(ms):.2f}  "
        f"p95 {ms[int(len(ms) * 0.95) - 1]:.2f}  max {ms[-1]:.2f}"
    )
    big = served["big.test"]
    print(
        f"jobs leased: {sum(served.values())}, big.test {big}, "
        f"{len(served) - (big > 0)} small destinations served"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--destinations", type=int, default=50)
    parser.add_argument("--limit", type=int, default=1)
    parser.add_argument("--store", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--leases", type=int, default=500, help="timed leases")
    parser.add_argument("--big-share", type=float, default=0.9)
    parser.add_argument("--queue-module", help="a file defining the EmbeddedQueue to time")
    args = parser.parse_args()
    if args.store == "sqlite":
        with tempfile.TemporaryDirectory() as data_dir:
            await measure(normalize_database_url(f"sqlite:///{Path(data_dir)}/bench.db"), args)
        return
    name = f"postline_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(PG_ADMIN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        await measure(normalize_database_url(PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"), args)
    finally:
        admin = await asyncpg.connect(PG_ADMIN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
