"""The rate limiter's decisions in whole numbers, and its SMTP reply, over a real bucket."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from postline.config import ConfigError, load_settings
from postline.queue.embedded import EmbeddedQueue
from postline.ratelimit import Decision, RateLimiter, describe, smtp_refusal
from tests.harness.stores import embedded_queue

#: One token per 100 s: nothing refills while a test runs.
SLOW = 0.01


@pytest_asyncio.fixture
async def queue(tmp_path: Path) -> AsyncIterator[EmbeddedQueue]:
    async with embedded_queue(f"sqlite+aiosqlite:///{tmp_path}/postline.db") as embedded:
        yield embedded


async def test_decisions_round_for_headers(queue: EmbeddedQueue) -> None:
    limiter = RateLimiter(queue, SLOW, 2)
    first, second, refused = [await limiter.check("key_1") for _ in range(3)]
    assert first == Decision(allowed=True, limit=2, remaining=1, reset=100, retry_after=0)
    assert second == Decision(allowed=True, limit=2, remaining=0, reset=200, retry_after=0)
    assert refused is not None and not refused.allowed
    assert (refused.limit, refused.remaining, refused.reset) == (2, 0, 200)
    assert 90 < refused.retry_after <= 100
    assert await limiter.check("key_2") == first, "each key has its own bucket"


async def test_a_wait_under_a_second_is_one_second(queue: EmbeddedQueue) -> None:
    limiter = RateLimiter(queue, 20.0, 1)  # a token every 50 ms
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    decision = await limiter.check("key_1")
    while decision is not None and decision.allowed:  # however slow the takes run
        assert loop.time() < deadline, "the bucket never ran out"
        decision = await limiter.check("key_1")
    assert decision is not None and decision.retry_after == 1


async def test_no_limit_checks_nothing(queue: EmbeddedQueue) -> None:
    assert await RateLimiter(queue, 0, 100).check("key_1") is None
    assert await RateLimiter(queue, 10, 0).check("key_1") is None


def test_the_smtp_refusal_is_a_temporary_failure_of_the_transaction() -> None:
    decision = Decision(allowed=False, limit=100, remaining=0, reset=2, retry_after=1)
    assert smtp_refusal(decision) == (
        "451 4.7.1 Rate limit exceeded for this API key; try again in 1 s"
    )


def test_describe() -> None:
    assert describe(50, 100) == "50 requests per second with bursts of up to 100"
    assert describe(1, 5) == "1 request per second with bursts of up to 5"
    assert describe(0.5, 1) == "0.5 requests per second with bursts of up to 1"


def test_settings_refuse_a_negative_or_infinite_limit(tmp_path: Path) -> None:
    for field, value, message in [
        ("rate_limit_per_second", -1, "POSTLINE_RATE_LIMIT_PER_SECOND: must be a finite"),
        ("rate_limit_per_second", float("inf"), "POSTLINE_RATE_LIMIT_PER_SECOND: must be a finite"),
        ("rate_limit_burst", -5, "POSTLINE_RATE_LIMIT_BURST: must be 0 (no limit) or more"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_settings(data_dir=tmp_path, hostname="h.test", **{field: value})
    defaults = load_settings(data_dir=tmp_path, hostname="h.test")
    assert (defaults.rate_limit_per_second, defaults.rate_limit_burst) == (50.0, 1000)
