"""Delivery throughput with 1..N worker processes, in either topology.

Starts a sink MX, one ``postline api`` and ``--workers`` ``postline worker``
processes sharing one installation:

- ``--topology embedded``: SQLite, the embedded queue and the file spool in a
  fresh data dir (every process on this host shares the files);
- ``--topology shared``: a fresh PostgreSQL database, a fresh Redis key prefix
  and the database spool (what several hosts would share).

All mail is relayed to the sink. Every email is accepted with the same
``scheduled_at`` a little in the future; the delivered rate is timed from that
moment until the store says every recipient is delivered, so accept does not
compete with delivery. Nothing is written into the repository.

Usage: .venv/bin/python bench/scale.py --topology shared --workers 2 [--emails 2000]
       [--concurrency 32] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import redis.asyncio as aioredis
from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import HERE, POSTLINE, free_port, wait_line

from postline.config import normalize_database_url
from postline.store.db import Database
from postline.store.schema import email_recipients

PG_ADMIN = os.environ.get("POSTLINE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("POSTLINE_TEST_REDIS", "redis://127.0.0.1:6379/0")


async def delivered(db: Database) -> int:
    async with db.read() as conn:
        statement = select(func.count()).where(email_recipients.c.status == "delivered")
        return int((await conn.execute(statement)).scalar_one())


async def run_cli(env: dict[str, str], *args: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        str(POSTLINE), *args, env=env, stdout=asyncio.subprocess.DEVNULL
    )
    if await proc.wait() != 0:
        raise RuntimeError(f"postline {' '.join(args)} failed")


async def one_run(topology: str, workers: int, emails: int, concurrency: int) -> float:
    sink_port, http_port = free_port(), free_port()
    sink = await asyncio.create_subprocess_exec(
        sys.executable, str(HERE / "sink.py"), str(sink_port), stdout=asyncio.subprocess.PIPE
    )
    assert sink.stdout is not None
    await wait_line(sink.stdout, "ready")
    processes: list[asyncio.subprocess.Process] = []
    pg_name = f"postline_bench_{secrets.token_hex(4)}"
    prefix = f"postline_bench_{secrets.token_hex(4)}"
    with tempfile.TemporaryDirectory() as data_dir:
        env = {k: v for k, v in os.environ.items() if not k.startswith("POSTLINE_")}
        env |= {
            "POSTLINE_DATA_DIR": data_dir,
            "POSTLINE_HTTP_ADDR": f"127.0.0.1:{http_port}",
            "POSTLINE_INBOUND_ADDR": "127.0.0.1:0",  # the inbound MX: any free port
            "POSTLINE_SMTP_ADDR": "127.0.0.1:0",  # the submission port: any free port
            "POSTLINE_RELAY_HOST": f"127.0.0.1:{sink_port}",
            "POSTLINE_CONCURRENCY": str(concurrency),
            "POSTLINE_DESTINATION_CONNECTIONS": str(max(concurrency * workers, 20)),
            "POSTLINE_LOG_LEVEL": "WARNING",
            # A send takes a rate-limit token per recipient: the benchmark measures the engine.
            "POSTLINE_RATE_LIMIT_PER_SECOND": "0",
        }
        if topology == "shared":
            admin = await asyncpg.connect(PG_ADMIN)
            await admin.execute(f'CREATE DATABASE "{pg_name}"')
            await admin.close()
            env |= {
                "POSTLINE_DATABASE_URL": PG_ADMIN.rsplit("/", 1)[0] + f"/{pg_name}",
                "POSTLINE_QUEUE_URL": REDIS,
                "POSTLINE_QUEUE_PREFIX": prefix,
                "POSTLINE_SPOOL_URL": "database",
            }
            url = env["POSTLINE_DATABASE_URL"]
        else:
            url = f"sqlite:///{data_dir}/postline.db"
        db = Database(normalize_database_url(url))
        try:
            await run_cli(env, "migrate")
            await run_cli(env, "domains", "add", "bench.test")
            api = await asyncio.create_subprocess_exec(
                str(POSTLINE), "api", env=env, stdout=asyncio.subprocess.PIPE
            )
            processes.append(api)
            assert api.stdout is not None
            await wait_line(api.stdout, "Postline is running")
            for _ in range(workers):
                worker = await asyncio.create_subprocess_exec(
                    str(POSTLINE), "worker", env=env, stdout=asyncio.subprocess.PIPE
                )
                processes.append(worker)
                assert worker.stdout is not None
                await wait_line(worker.stdout, "worker is running")
            key = (Path(data_dir) / "admin-key.txt").read_text().strip()
            item = {
                "from": "Bench <bench@bench.test>",
                "to": "someone@elsewhere.test",
                "subject": "benchmark",
                "text": ("x" * 70 + "\n") * 70,  # ~5 KB
            }
            lead = emails / 60 + 3
            due = datetime.now(UTC) + timedelta(seconds=lead)
            item["scheduled_at"] = due.isoformat()
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{http_port}",
                headers={"Authorization": f"Bearer {key}"},
                timeout=120,
            ) as client:
                for offset in range(0, emails, 100):
                    size = min(100, emails - offset)
                    response = await client.post("/v1/emails/batch", json=[item] * size)
                    response.raise_for_status()
            wait = (due - datetime.now(UTC)).total_seconds()
            if wait < 0:
                print(f"warning: accepting took {lead - wait:.1f}s > lead {lead:.1f}s")
            await asyncio.sleep(max(wait, 0))
            started = time.perf_counter()
            while await delivered(db) < emails:
                await asyncio.sleep(0.1)
            return emails / (time.perf_counter() - started)
        finally:
            for proc in processes:
                proc.terminate()
            for proc in processes:
                await proc.wait()
            sink.terminate()
            await sink.wait()
            await db.close()
            if topology == "shared":
                admin = await asyncpg.connect(PG_ADMIN)
                await admin.execute(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')
                await admin.close()
                client_r = aioredis.Redis.from_url(REDIS)
                keys = [k async for k in client_r.scan_iter(match=f"{prefix}:*")]
                if keys:
                    await client_r.delete(*keys)
                await client_r.aclose()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--topology", choices=["embedded", "shared"], default="embedded")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--emails", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    rates = []
    for run in range(args.runs):
        rate = await one_run(args.topology, args.workers, args.emails, args.concurrency)
        rates.append(rate)
        print(f"run {run + 1}: delivered {rate:.0f}/s")
    print(
        f"topology={args.topology} workers={args.workers} emails={args.emails} "
        f"concurrency={args.concurrency}"
    )
    print(
        "delivered/s min/median/max: "
        f"{min(rates):.0f} / {statistics.median(rates):.0f} / {max(rates):.0f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
