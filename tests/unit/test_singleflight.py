"""SingleFlight: callers that ask for one key while its lookup runs share that lookup."""

from __future__ import annotations

import asyncio

import pytest

from postline.singleflight import SingleFlight


class Lookup:
    """A lookup the test lets finish when it wants, counting its runs."""

    def __init__(self) -> None:
        self.runs = 0
        self.release = asyncio.Event()

    async def __call__(self) -> str:
        self.runs += 1
        await self.release.wait()
        return f"answer {self.runs}"


async def test_callers_asking_together_share_one_run_and_its_answer() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    lookup = Lookup()
    callers = [asyncio.ensure_future(flight.run("a", lookup)) for _ in range(5)]
    await asyncio.sleep(0)
    lookup.release.set()
    assert await asyncio.gather(*callers) == ["answer 1"] * 5
    assert lookup.runs == 1
    # Once it ended, the next caller runs a lookup of its own.
    assert await flight.run("a", lookup) == "answer 2"


async def test_each_key_has_its_own_run() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    lookup = Lookup()
    lookup.release.set()
    answers = await asyncio.gather(flight.run("a", lookup), flight.run("b", lookup))
    assert list(answers) == ["answer 1", "answer 2"]


async def test_an_error_reaches_every_caller_and_is_not_kept() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    runs = 0

    async def failing() -> str:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0)
        raise LookupError("SERVFAIL")

    results = await asyncio.gather(
        *(flight.run("a", failing) for _ in range(3)), return_exceptions=True
    )
    assert runs == 1
    assert all(isinstance(r, LookupError) for r in results)
    with pytest.raises(LookupError):
        await flight.run("a", failing)
    assert runs == 2


async def test_a_cancelled_caller_does_not_cancel_the_lookup_for_the_others() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    lookup = Lookup()
    leaving = asyncio.ensure_future(flight.run("a", lookup))
    staying = asyncio.ensure_future(flight.run("a", lookup))
    await asyncio.sleep(0)
    leaving.cancel()
    await asyncio.sleep(0)
    lookup.release.set()
    assert await staying == "answer 1"
    assert leaving.cancelled() and lookup.runs == 1


async def test_close_cancels_the_lookups_under_way() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    lookup = Lookup()  # never released
    caller = asyncio.ensure_future(flight.run("a", lookup))
    while lookup.runs == 0:  # the caller, then the lookup's task, have started
        await asyncio.sleep(0)
    await asyncio.wait_for(flight.close(), 10)  # a lookup left running: TimeoutError
    with pytest.raises(asyncio.CancelledError):
        await caller
    lookup.release.set()
    assert await flight.run("a", lookup) == "answer 2"  # a new lookup, not the cancelled one
