"""Group read: concurrent askers share reads, each gets its own answer, failures reach all."""

from __future__ import annotations

import asyncio

import pytest

from postline.store.gathering import GroupRead


async def test_concurrent_askers_share_reads_and_get_their_own_answers() -> None:
    reads: list[list[int]] = []

    async def read(items: list[int]) -> list[int]:
        reads.append(items)
        await asyncio.sleep(0)  # a read yields to the loop, letting others queue up
        return [item * 10 for item in items]

    group: GroupRead[int, int] = GroupRead(read, name="test")
    answers = await asyncio.gather(*(group.get(i) for i in range(50)))
    assert answers == [i * 10 for i in range(50)]
    assert sorted(i for batch in reads for i in batch) == list(range(50))
    assert len(reads) < 50


async def test_an_asker_arriving_during_a_read_waits_for_the_next_one() -> None:
    """Never an answer read before it was asked for."""
    started, gate = asyncio.Event(), asyncio.Event()
    reads: list[list[str]] = []

    async def read(items: list[str]) -> list[str]:
        reads.append(items)
        started.set()
        await gate.wait()
        return items

    group: GroupRead[str, str] = GroupRead(read, name="test")
    first = asyncio.create_task(group.get("a"))
    await started.wait()
    second = asyncio.create_task(group.get("b"))
    await asyncio.sleep(0)
    gate.set()
    assert list(await asyncio.wait_for(asyncio.gather(first, second), timeout=5)) == ["a", "b"]
    assert reads == [["a"], ["b"]]


async def test_a_failed_read_fails_its_askers_and_the_next_read_runs() -> None:
    async def read(items: list[int]) -> list[int]:
        if 3 in items:
            raise ValueError("the store is away")
        return items

    group: GroupRead[int, int] = GroupRead(read, name="test")
    results = await asyncio.gather(*(group.get(i) for i in range(5)), return_exceptions=True)
    assert all(isinstance(r, ValueError) for r in results)
    assert await group.get(7) == 7


async def test_too_few_answers_is_an_error_not_a_wrong_answer() -> None:
    async def read(items: list[int]) -> list[int]:
        return items[:-1]

    group: GroupRead[int, int] = GroupRead(read, name="test")
    with pytest.raises(RuntimeError, match="answers"):
        await asyncio.gather(group.get(1), group.get(2))


async def test_batches_are_at_most_max_batch() -> None:
    reads: list[list[int]] = []

    async def read(items: list[int]) -> list[int]:
        reads.append(items)
        return items

    group: GroupRead[int, int] = GroupRead(read, name="test", max_batch=4)
    assert await asyncio.gather(*(group.get(i) for i in range(10))) == list(range(10))
    assert max(len(batch) for batch in reads) <= 4
