"""Webhook dispatch throughput: drain a backlog of events to a local receiver.

Builds Postline in-process on a fresh SQLite database, registers one endpoint
(a receiver in its own process), inserts N events into the outbox at once and
times the dispatcher until every delivery succeeded, on uvloop as `postline serve` runs it;
the CPU per event is this process's (dispatcher, its database writes, the polling).

Usage: .venv/bin/python bench/webhooks.py [--events 10000] [--concurrency 1 32]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import uvloop
from sqlalchemy import func, insert, select

from postline.app import Services
from postline.config import load_settings
from postline.ids import new_id
from postline.store.migrate import upgrade_async
from postline.store.schema import events, webhook_deliveries, webhooks
from postline.store.types import utcnow

HERE = Path(__file__).resolve().parent


async def drain(count: int, concurrency: int, port: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as data_dir:
        settings = load_settings(
            data_dir=Path(data_dir),
            webhook_allow_private=True,
            webhook_concurrency=concurrency,
            log_level="WARNING",
        )
        await upgrade_async(settings.database_url)
        services = Services.build(settings)
        now = utcnow()
        async with services.db.write() as conn:
            await conn.execute(
                insert(webhooks).values(
                    id=new_id("wh_"),
                    url=f"http://127.0.0.1:{port}/hook",
                    events=["*"],
                    secret="whsec_" + "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
                    enabled=True,
                    created_at=now,
                    updated_at=now,
                )
            )
            await conn.execute(
                insert(events),
                [
                    {
                        "id": new_id("evt_"),
                        "type": "email.delivered",
                        "sequence": i,
                        "payload": {"type": "email.delivered", "data": {"n": i}},
                        "created_at": now,
                    }
                    for i in range(count)
                ],
            )
        stop = asyncio.Event()
        started = time.perf_counter()
        cpu_started = time.process_time()
        task = asyncio.create_task(services.dispatcher.run(stop))
        done = select(func.count()).where(webhook_deliveries.c.status == "succeeded")
        while True:
            async with services.db.read() as conn:
                if (await conn.execute(done)).scalar_one() >= count:
                    break
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        stop.set()
        await task
        await services.close()
        return elapsed, cpu


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    args = parser.parse_args()
    port = 18000 + (int(time.time()) % 1000)
    receiver = await asyncio.create_subprocess_exec(
        sys.executable, str(HERE / "receiver.py"), str(port), stdout=asyncio.subprocess.PIPE
    )
    assert receiver.stdout is not None
    await asyncio.wait_for(receiver.stdout.readline(), 30)
    try:
        for concurrency in args.concurrency:
            elapsed, cpu = await drain(args.events, concurrency, port)
            print(
                f"events={args.events} concurrency={concurrency}: drained in {elapsed:.1f} s "
                f"= {args.events / elapsed:.0f} events/s, "
                f"{1000 * cpu / args.events:.2f} ms of CPU per event"
            )
    finally:
        receiver.terminate()
        await receiver.wait()


if __name__ == "__main__":
    # The event loop `postline serve` runs the dispatcher on.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
