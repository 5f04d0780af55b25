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


async def test_a_failing_item_fails_alone(caplog: pytest.LogCaptureFixture) -> None:
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
    # The failed batch is said, once, before its items are written alone.
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ["test: a batch of 6 failed (ValueError); writing its items one by one"]


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


async def test_an_item_is_written_again_after_the_connection_broke(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("postline.store.batching.RETRY_PAUSES", (0.0, 0.0))
    calls: list[list[int]] = []

    async def write(items: list[int]) -> None:
        calls.append(items)
        if len(calls) < 3:
            raise ConnectionResetError("server closed the connection")

    batcher: Batcher[int] = Batcher(write, name="test")
    await batcher.submit(7)
    assert calls == [[7], [7], [7]]


async def test_a_connection_that_stays_broken_fails_the_item_in_the_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("postline.store.batching.RETRY_PAUSES", (0.0, 0.0))
    calls = 0

    async def write(items: list[int]) -> None:
        nonlocal calls
        calls += 1
        raise ConnectionResetError("server closed the connection")

    batcher: Batcher[int] = Batcher(write, name="test")
    with pytest.raises(ConnectionResetError):
        await batcher.submit(7)
    assert calls == 3  # the first try and one per pause


async def test_a_data_error_is_not_retried() -> None:
    calls = 0

    async def write(items: list[int]) -> None:
        nonlocal calls
        calls += 1
        raise ValueError("bad item")

    batcher: Batcher[int] = Batcher(write, name="test")
    with pytest.raises(ValueError):
        await batcher.submit(1)
    assert calls == 1
