"""Where to build and sign messages: on the loop, in a thread pool, or in a process pool.

Builds the largest request the caps allow (a batch of 500 emails sharing 1,000
recipients, 50 custom headers each; and one email with an attachment as large
as POSTLINE_MAX_MESSAGE_BYTES allows) with DKIM signing, three ways, while a
ticker on the event loop measures how late it wakes (the loop's stall):

- inline: on the loop, as accept did before issue 20
- thread: ``ThreadPoolExecutor`` sized to the cores
- process: ``ProcessPoolExecutor`` sized to the cores (``postline.compose.new_pool``,
  what Postline uses); the key goes as PEM and is parsed once per worker, the
  content and the body are pickled both ways

Usage: .venv/bin/python bench/offloop.py [--runs 3]
Results go to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from datetime import UTC, datetime

from postline.compose import Composition, Signer, compose, new_pool, pool_size
from postline.domains import _generate_dkim_key
from postline.message import Attachment, Content

TICK = 0.005


def _batch() -> list[Content]:
    headers = {f"X-Custom-{n:02d}": "v" * 300 for n in range(50)}
    return [
        Content(
            from_name="Bench",
            from_address="bench@example.test",
            to=[f"user{2 * n}@sink.test", f"user{2 * n + 1}@sink.test"],
            subject=f"message {n}",
            text="Hello, this is a benchmark message.\n" * 140,
            html="<p>Hello, this is a benchmark message.</p>\n" * 100,
            headers=headers,
        )
        for n in range(500)
    ]


def _large() -> list[Content]:
    data = bytes(range(256)) * (17 * 1024 * 1024 // 256)  # base64s to ~23 MB
    return [
        Content(
            from_name="Bench",
            from_address="bench@example.test",
            to=["user@sink.test"],
            subject="large",
            text="see attached",
            attachments=[Attachment("data.bin", data)],
        )
    ]


async def _measure(work: Callable[[], Awaitable[int]]) -> tuple[float, float, int]:
    """(wall seconds, the loop's worst lateness in seconds, bytes built)."""
    worst = 0.0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal worst
        while not done.is_set():
            before = time.perf_counter()
            await asyncio.sleep(TICK)
            worst = max(worst, time.perf_counter() - before - TICK)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    size = await work()
    wall = time.perf_counter() - started
    done.set()
    await task
    return wall, worst, size


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    signer = Signer("example.test", "bench", _generate_dkim_key())
    date = datetime.now(UTC)
    threads = ThreadPoolExecutor(max_workers=pool_size())
    processes = new_pool()
    loop = asyncio.get_running_loop()

    def items(contents: list[Content]) -> list[Composition]:
        return [Composition(c, f"<{n}@b>", date, signer=signer) for n, c in enumerate(contents)]

    def inline(contents: list[Content]) -> Callable[[], Awaitable[int]]:
        async def run() -> int:
            return sum(len(compose(item)) for item in items(contents))

        return run

    def pooled(contents: list[Content], pool: Executor) -> Callable[[], Awaitable[int]]:
        async def run() -> int:
            calls = [loop.run_in_executor(pool, compose, item) for item in items(contents)]
            return sum(len(body) for body in await asyncio.gather(*calls))

        return run

    # Start the process pool's workers (and parse the key in each) before timing.
    await pooled(_batch()[: pool_size() * 2], processes)()
    print(f"workers per pool: {pool_size()} (one per core)  tick: {TICK * 1000:.0f} ms")
    for label, contents in (("batch 500 x 2 rcpt", _batch()), ("one 17 MiB attachment", _large())):
        for mode, work in (
            ("inline", inline(contents)),
            ("thread", pooled(contents, threads)),
            ("process", pooled(contents, processes)),
        ):
            walls, stalls = [], []
            for _ in range(args.runs):
                wall, stall, size = await _measure(work)
                walls.append(wall)
                stalls.append(stall)
            print(
                f"{label:24} {mode:8} wall {statistics.median(walls):6.2f} s"
                f"  loop stall max {max(stalls) * 1000:7.1f} ms"
                f" median {statistics.median(stalls) * 1000:7.1f} ms  ({size / 1e6:.1f} MB)"
            )
    threads.shutdown()
    processes.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
