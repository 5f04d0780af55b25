"""The file spool's batch write: what a batch of bodies costs before the accept's commit.

Writes ROUNDS batches of N bodies of SIZE bytes into a fresh spool directory (each body
written and renamed, then the batch made durable by one syncfs on Linux; with
--fsync-each each body and directory fsynced, as off Linux) and prints the time per
body, then deletes them. The accept of a batch waits for this before it commits.

Usage: .venv/bin/python bench/spool.py [--bodies 500] [--size 5000] [--rounds 5] [--dir DIR]
       [--fsync-each]
(DIR: a directory on the disk the data dir lives on; default: a temp dir beside bench/)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

from postline.ids import new_id
from postline.spool.files import FileSpool

HERE = Path(__file__).resolve().parent


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bodies", type=int, default=500)
    parser.add_argument("--size", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=HERE.parent)
    parser.add_argument("--fsync-each", action="store_true")
    args = parser.parse_args()
    body = os.urandom(args.size)
    per_body = []
    with tempfile.TemporaryDirectory(dir=args.dir, prefix=".spool-bench-") as root:
        spool = FileSpool(Path(root), fsync_each=args.fsync_each)
        for _ in range(args.rounds):
            items = [(new_id("em_"), body) for _ in range(args.bodies)]
            started = time.perf_counter()
            await spool.put_many(items)
            per_body.append((time.perf_counter() - started) / args.bodies)
            await spool.delete_many([ref for ref, _ in items])
    print(
        ("fsync each: " if args.fsync_each else "syncfs: ")
        + f"{args.bodies} bodies of {args.size} B per batch, {args.rounds} rounds: "
        + ", ".join(f"{1000 * t:.3f}" for t in per_body)
        + f" ms per body (median {1000 * statistics.median(per_body):.3f})"
    )


if __name__ == "__main__":
    asyncio.run(main())
