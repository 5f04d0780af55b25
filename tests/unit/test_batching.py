"""Group commit: batches form under load, and one bad item does not sink the others."""

from __future__ import annotations

import asyncio

import pytest

from postline.store.batching import Batcher


async def test_concurrent_submissions_share_batches() -> None:
    batches: list[list[int]] = []

    async def write(items: list[int]) -> None:
        batches.append(items)
        await asyncio.sleep(0)  # a commit yields to the loop, letting others queue up

    batcher: Batcher[int] = Batcher(write, name="test")
    await asyncio.gather(*(batcher.submit(i) for i in range(50)))
    assert sorted(i for batch in batches for i in batch) == list(range(50))
    assert len(batches) < 50


async def test_a_failing_item_fails_alone() -> None:
    written: list[int] = []

    async def write(items: list[int]) -> None:
        if 3 in items:
            raise ValueError("bad item")
        written.extend(items)

    batcher: Batcher[int] = Batcher(write, name="test")
    results = await asyncio.gather(*(batcher.submit(i) for i in range(6)), return_exceptions=True)
    assert isinstance(results[3], ValueError)
    assert [r for i, r in enumerate(results) if i != 3] == [None] * 5
    assert sorted(written) == [0, 1, 2, 4, 5]


async def test_a_cancelled_caller_still_gets_its_item_written() -> None:
    gate = asyncio.Event()
    written: list[int] = []

    async def write(items: list[int]) -> None:
        await gate.wait()
        written.extend(items)

    batcher: Batcher[int] = Batcher(write, name="test")
    caller = asyncio.create_task(batcher.submit(7))
    await asyncio.sleep(0)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    gate.set()
    follower = asyncio.create_task(batcher.submit(8))
    await asyncio.wait_for(follower, timeout=5)
    assert written == [7, 8]
