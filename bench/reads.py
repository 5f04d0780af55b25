"""What one ``Database.read()`` block of one statement costs on PostgreSQL.

The API reads its caller's key and the sending domain in blocks of their own on every
request, so a read's round trips are on the hot path of accept in the PostgreSQL +
Redis topology. Times ``--rounds`` rounds of ``--reads`` sequential blocks, each
running ``SELECT 1``, after 200 untimed ones, and prints each round's mean.

Usage: .venv/bin/python bench/reads.py [--url postgresql://postgres@127.0.0.1:5432/postgres]
       [--reads 1000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from sqlalchemy import text

from postline.config import normalize_database_url
from postline.store.db import Database


async def run(url: str, reads: int, rounds: int) -> list[float]:
    db = Database(url)
    try:
        for _ in range(200):
            async with db.read() as conn:
                await conn.execute(text("SELECT 1"))
        means = []
        for _ in range(rounds):
            started = time.perf_counter()
            for _ in range(reads):
                async with db.read() as conn:
                    await conn.execute(text("SELECT 1"))
            means.append((time.perf_counter() - started) * 1000 / reads)
        return means
    finally:
        await db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--reads", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    means = asyncio.run(run(normalize_database_url(args.url), args.reads, args.rounds))
    print("ms per read, each round:", " ".join(f"{m:.3f}" for m in means))


if __name__ == "__main__":
    main()
