"""What one ``Database.read()`` (or ``Database.lookup()``) block of one statement costs.

The API looks up its caller's key and the sending domain in blocks of their own on every
request, so a read's round trips are on the hot path of accept. Times ``--rounds``
rounds of ``--reads`` sequential blocks, each running ``SELECT 1``, after 200 untimed
ones, and prints each round's mean, in wall time and in the process's CPU time (on
SQLite the statement runs in the connection's own thread: both count).

Usage: .venv/bin/python bench/reads.py [--url postgresql://postgres@127.0.0.1:5432/postgres
       | --url sqlite:////tmp/reads.db] [--block read|lookup] [--reads 1000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from sqlalchemy import text

from postline.config import normalize_database_url
from postline.store.db import Database


async def run(url: str, block: str, reads: int, rounds: int) -> list[tuple[float, float]]:
    """Each round's mean wall and CPU milliseconds per block."""
    db = Database(url)
    opened = db.lookup if block == "lookup" else db.read
    try:
        for _ in range(200):
            async with opened() as conn:
                await conn.execute(text("SELECT 1"))
        means = []
        for _ in range(rounds):
            started, cpu = time.perf_counter(), time.process_time()
            for _ in range(reads):
                async with opened() as conn:
                    await conn.execute(text("SELECT 1"))
            wall = (time.perf_counter() - started) * 1000 / reads
            means.append((wall, (time.process_time() - cpu) * 1000 / reads))
        return means
    finally:
        await db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--block", choices=("read", "lookup"), default="read")
    parser.add_argument("--reads", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    url = normalize_database_url(args.url)
    means = asyncio.run(run(url, args.block, args.reads, args.rounds))
    print(f"ms per {args.block} block, each round (wall / CPU):")
    print(" ".join(f"{wall:.3f}/{cpu:.3f}" for wall, cpu in means))


if __name__ == "__main__":
    main()
