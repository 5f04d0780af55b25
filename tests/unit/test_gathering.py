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


class HeldReads:
    """Reads that record what they were given and wait at a gate until it opens."""

    def __init__(self) -> None:
        self.started, self.gate = asyncio.Event(), asyncio.Event()
        self.reads: list[list[str]] = []
        self.group: GroupRead[str, str] = GroupRead(self.read, name="test")

    async def read(self, items: list[str]) -> list[str]:
        self.reads.append(items)
        self.started.set()
        await self.gate.wait()
        return items

    async def first(self, item: str) -> asyncio.Task[str]:
        """Ask for ``item`` and return once its read runs (and waits at the gate)."""
        task = asyncio.create_task(self.group.get(item))
        await self.started.wait()
        return task


async def test_an_asker_arriving_during_a_read_waits_for_the_next_one() -> None:
    """Never an answer read before it was asked for."""
    held = HeldReads()
    first = await held.first("a")
    second = asyncio.create_task(held.group.get("b"))
    await asyncio.sleep(0)
    held.gate.set()
    assert list(await asyncio.wait_for(asyncio.gather(first, second), timeout=5)) == ["a", "b"]
    assert held.reads == [["a"], ["b"]]


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


async def test_an_answer_that_is_an_exception_reaches_its_own_asker_alone() -> None:
    """The group commit's refusal of one call: the others of its batch get their answers."""

    async def read(items: list[int]) -> list[int | Exception]:
        return [ValueError(f"no {item}") if item == 3 else item for item in items]

    group: GroupRead[int, int] = GroupRead(read, name="test")
    results = await asyncio.gather(*(group.get(i) for i in range(5)), return_exceptions=True)
    assert [r for r in results if not isinstance(r, ValueError)] == [0, 1, 2, 4]
    assert isinstance(results[3], ValueError) and str(results[3]) == "no 3"


async def test_batches_are_weighed_by_size_and_an_oversized_item_goes_alone() -> None:
    reads: list[list[int]] = []

    async def read(items: list[int]) -> list[int]:
        reads.append(items)
        return items

    group: GroupRead[int, int] = GroupRead(read, name="test", max_batch=10, size=lambda i: i)
    sizes = [4, 4, 4, 30, 1, 1]
    assert await asyncio.gather(*(group.get(s) for s in sizes)) == sizes
    assert [4, 4] in reads and [30] in reads
    assert all(sum(batch) <= 10 or len(batch) == 1 for batch in reads)


async def test_a_cancelled_asker_whose_item_waits_takes_it_back() -> None:
    """Nothing is read (or committed) for an asker who is gone; one being read is kept."""
    held = HeldReads()
    group = held.group
    first = await held.first("a")
    second, third = (asyncio.create_task(group.get(item)) for item in "bc")
    await asyncio.sleep(0)
    assert group.waiting == 2
    second.cancel()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    with pytest.raises(asyncio.CancelledError):
        await first
    assert group.waiting == 1
    held.gate.set()
    assert await asyncio.wait_for(third, timeout=5) == "c"
    assert held.reads == [["a"], ["c"]]
