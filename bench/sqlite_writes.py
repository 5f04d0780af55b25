"""How long a SQLite write transaction holds the write lock in a busy process.

On SQLite a write transaction holds the database's one write lock from BEGIN
IMMEDIATE to COMMIT, and each of its statements is a trip to the connection's
thread that waits for the event loop to come round again. In ``postline serve``
the loop is never idle (32 SMTP sessions, HTTP, webhooks), so the time held is
mostly loop iterations. This runs ``--transactions`` write transactions of
``--statements`` statements each (SELECTs and UPDATEs on a table of its own, as the
recorder's are) while ``--busy`` tasks keep the loop turning over (each a small
piece of work, then a yield), and prints the median and p90 time held and the
number of loop iterations per transaction.

``--driver adapter`` uses SQLAlchemy's aiosqlite adapter as it is (four trips per
statement: cursor, execute, fetch, close); ``--driver one-trip`` (the default)
Postline's (``postline.store.sqlite_driver``: one).

Usage: .venv/bin/python bench/sqlite_writes.py [--driver one-trip|adapter]
       [--transactions 300] [--statements 10] [--busy 32]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from postline.store import db as db_module
from postline.store.db import Database


def _adapter_engine(url: str, secrets: Any = None) -> Any:
    """``create_engine`` with SQLAlchemy's own adapter, for comparison."""
    engine = create_async_engine(url, pool_size=8, max_overflow=8)
    db_module._install_sqlite_hooks(engine)
    return engine


async def _busy(stop: asyncio.Event, counter: list[int]) -> None:
    while not stop.is_set():
        sum(range(200))  # a few microseconds of work, as a callback of an SMTP session is
        counter[0] += 1
        await asyncio.sleep(0)


async def run(driver: str, transactions: int, statements: int, busy: int) -> None:
    if driver == "adapter":
        db_module.create_engine = _adapter_engine
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(f"sqlite+aiosqlite:///{Path(tmp) / 'writes.db'}")
        try:
            async with db.write() as conn:
                await conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER)"))
                await conn.execute(
                    text("INSERT INTO t (id, n) VALUES (:id, 0)"),
                    [{"id": i} for i in range(1000)],
                )
            stop = asyncio.Event()
            counter = [0]
            spinners = [asyncio.create_task(_busy(stop, counter)) for _ in range(busy)]
            held: list[float] = []
            turns: list[int] = []
            for i in range(transactions):
                async with db.write() as conn:
                    started, before = time.perf_counter(), counter[0]
                    for s in range(statements):
                        row = i * statements + s
                        if s % 2:
                            await conn.execute(
                                text("UPDATE t SET n = n + 1 WHERE id = :id"), {"id": row % 1000}
                            )
                        else:
                            await conn.execute(
                                text("SELECT n FROM t WHERE id = :id"), {"id": row % 1000}
                            )
                held.append((time.perf_counter() - started) * 1000)
                turns.append((counter[0] - before) // max(busy, 1))
            stop.set()
            await asyncio.gather(*spinners)
        finally:
            await db.close()
    held.sort()
    print(
        f"{driver:9} {transactions} transactions of {statements} statements, {busy} busy tasks: "
        f"held median {statistics.median(held):.2f} ms, p90 {held[int(len(held) * 0.9)]:.2f} ms; "
        f"loop iterations per transaction {statistics.median(turns):.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--driver", choices=["one-trip", "adapter"], default="one-trip")
    parser.add_argument("--transactions", type=int, default=300)
    parser.add_argument("--statements", type=int, default=10)
    parser.add_argument("--busy", type=int, default=32)
    args = parser.parse_args()
    asyncio.run(run(args.driver, args.transactions, args.statements, args.busy))


if __name__ == "__main__":
    main()
