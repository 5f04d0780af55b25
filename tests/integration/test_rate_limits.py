"""Per-key rate limits at the HTTP API: 429 with Retry-After, shared across processes.

The buckets themselves are part of the queue contract (test_queue_contract.py);
these tests drive the real API app and read its answers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from sqlalchemy import func, select

from postline.keys import create_key
from postline.queue.redis import RedisQueue
from postline.store.schema import sent_emails
from tests.harness.postline import PostlineUnderTest

Factory = Callable[..., Awaitable[PostlineUnderTest]]

#: One token per 100 s: nothing refills while a test runs, however slow the machine.
SLOW = 0.01
HEADERS = ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset")


def email(to: str = "someone@dest.test") -> dict[str, Any]:
    return {"from": "sender@example.test", "to": to, "subject": "Hi", "text": "Hello"}


async def sent_count(pl: PostlineUnderTest) -> int:
    async with pl.services.db.read() as conn:
        return int((await conn.execute(select(func.count()).select_from(sent_emails))).scalar_one())


async def test_a_key_past_its_burst_gets_a_429_problem_with_retry_after(
    postline_factory: Factory,
) -> None:
    pl = await postline_factory(engine=False, rate_limit_per_second=SLOW, rate_limit_burst=3)
    answers = [
        await pl.client.post("/v1/emails", json=email(), headers=pl.auth()) for _ in range(3)
    ]
    assert [a.status_code for a in answers] == [202, 202, 202]
    assert [a.headers["ratelimit-limit"] for a in answers] == ["3", "3", "3"]
    assert [a.headers["ratelimit-remaining"] for a in answers] == ["2", "1", "0"]
    assert (
        0 < int(answers[0].headers["ratelimit-reset"]) <= int(answers[2].headers["ratelimit-reset"])
    )

    refused = await pl.client.post("/v1/emails", json=email(), headers=pl.auth())
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    # A whole token at 0.01/s is 100 s away: Retry-After is whole seconds, at least 1.
    assert 90 < int(refused.headers["retry-after"]) <= 100
    assert refused.headers["ratelimit-remaining"] == "0"
    assert refused.headers["ratelimit-limit"] == "3"
    problem = refused.json()
    assert problem["status"] == 429 and problem["title"] == "Too many requests"
    assert "0.01 requests per second with bursts of up to 3" in problem["detail"]
    assert f"retry in {refused.headers['retry-after']} s" in problem["detail"]
    assert await sent_count(pl) == 3, "a refused request accepts nothing"

    # Every authenticated route is limited, reads and admin ones too.
    for method, path in [("GET", "/v1/emails"), ("GET", "/v1/api-keys"), ("GET", "/v1/domains")]:
        answer = await pl.client.request(method, path, headers=pl.auth())
        assert answer.status_code == 429, (path, answer.text)


async def test_other_keys_and_unauthenticated_routes_are_unaffected(
    postline_factory: Factory,
) -> None:
    pl = await postline_factory(engine=False, rate_limit_per_second=SLOW, rate_limit_burst=1)
    other = await create_key(pl.services.db, "other", "example.test")
    assert (await pl.client.get("/v1/emails", headers=pl.auth())).status_code == 200
    assert (await pl.client.get("/v1/emails", headers=pl.auth())).status_code == 429

    mine = await pl.client.post("/v1/emails", json=email(), headers=pl.auth(other.key))
    assert mine.status_code == 202, mine.text
    assert mine.headers["ratelimit-remaining"] == "0"

    for path in ("/healthz", "/readyz", "/metrics"):
        answer = await pl.client.get(path)
        assert answer.status_code == 200, path
        assert not any(name in answer.headers for name in HEADERS), path
    assert 'postline_rate_limited_total{source="api"} 1.0' in (await pl.client.get("/metrics")).text

    # A request without a valid key is refused before any bucket is touched.
    unknown = await pl.client.get("/v1/emails", headers=pl.auth("pl_unknown"))
    assert unknown.status_code == 401
    assert not any(name in unknown.headers for name in HEADERS)


async def test_the_bucket_refills_and_the_key_may_send_again(postline_factory: Factory) -> None:
    rate = 20.0
    pl = await postline_factory(engine=False, rate_limit_per_second=rate, rate_limit_burst=2)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    answer = await pl.client.get("/v1/emails", headers=pl.auth())
    while answer.status_code != 429:  # emptied, however fast or slow the requests run
        assert answer.status_code == 200 and loop.time() < deadline, answer.text
        answer = await pl.client.get("/v1/emails", headers=pl.auth())
    assert answer.headers["retry-after"] == "1", "a 50 ms wait rounds up to one second"
    while answer.status_code == 429:
        assert loop.time() < deadline, "the bucket never refilled"
        await asyncio.sleep(1 / rate)
        answer = await pl.client.get("/v1/emails", headers=pl.auth())
    assert answer.status_code == 200


async def test_limits_can_be_turned_off(postline_factory: Factory) -> None:
    pl = await postline_factory(engine=False, rate_limit_per_second=0, rate_limit_burst=1)
    for _ in range(5):
        answer = await pl.client.get("/v1/emails", headers=pl.auth())
        assert answer.status_code == 200
        assert not any(name in answer.headers for name in HEADERS)


async def test_an_unreachable_queue_backend_lets_requests_through(
    postline_factory: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    """Fail open: the store answers, so the request is served; the limit is not checked."""
    pl = await postline_factory(
        engine=False,
        queue_url="redis://127.0.0.1:1/0",
        rate_limit_per_second=SLOW,
        rate_limit_burst=1,
    )
    with caplog.at_level(logging.WARNING, logger="postline.ratelimit"):
        answers = [await pl.client.get("/v1/emails", headers=pl.auth()) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert not any(name in answers[0].headers for name in HEADERS)
    warnings = [r for r in caplog.records if "rate limits not checked" in r.getMessage()]
    assert len(warnings) == 1, "one warning, not one per request"
    metrics = pl.services.metrics.render().decode()  # /metrics itself needs the queue
    assert "postline_rate_limit_unchecked_total 3.0" in metrics


@pytest.mark.postgres
@pytest.mark.redis
async def test_api_processes_sharing_a_queue_share_each_keys_budget(
    postline_factory: Factory, postgres_url: str, redis_url: str, redis_prefix: str
) -> None:
    """Two API processes on one installation: a key's burst is spent across both."""
    settings: dict[str, Any] = {
        "database_url": postgres_url,
        "queue_url": redis_url,
        "queue_prefix": redis_prefix,
        "spool_url": "database",
        "rate_limit_per_second": SLOW,
        "rate_limit_burst": 4,
    }
    first = await postline_factory(engine=False, **settings)
    second = await postline_factory(engine=False, domains=(), **settings)
    key = first.admin_key  # the same key, valid in both: they share the database
    clients = [first.client, second.client] * 3
    answers: list[httpx.Response] = []
    for client in clients:
        answers.append(await client.post("/v1/emails", json=email(), headers=first.auth(key)))
    assert [a.status_code for a in answers] == [202, 202, 202, 202, 429, 429]
    assert [a.headers["ratelimit-remaining"] for a in answers] == ["3", "2", "1", "0", "0", "0"]


@pytest.mark.redis
async def test_idle_redis_buckets_expire_when_full_again(redis_url: str, redis_prefix: str) -> None:
    queue = RedisQueue(redis_url, prefix=redis_prefix)
    client = aioredis.Redis.from_url(redis_url)
    try:
        rate, burst = 10.0, 5
        for _ in range(3):
            assert (await queue.take_token("key:idle", rate, burst)).allowed
        ttl = await client.pttl(f"{redis_prefix}:rate:key:idle")
        # Full again 3 tokens / 10 per second = 300 ms after the last take (plus a second).
        assert 0 < ttl <= 1300
    finally:
        await client.aclose()
        await queue.close()
