"""PostgreSQL + Redis + database spool, in-process: several Postlines sharing one installation.

Each ``Postline`` built here is one process of the production topology: they
share the database, the queue prefix and the spool, and nothing else.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from postline.housekeeping import housekeeping_pass
from tests.harness.fake_mx import FakeMX
from tests.harness.postline import PostlineUnderTest

pytestmark = pytest.mark.redis

Factory = Callable[..., Awaitable[PostlineUnderTest]]
Shared = Callable[..., Awaitable[PostlineUnderTest]]


@pytest.fixture
def shared(
    postline_factory: Factory, postgres_url: str, redis_url: str, redis_prefix: str
) -> Shared:
    """Build processes of one installation: same database, queue prefix and spool."""
    made = 0

    async def make(**overrides: Any) -> PostlineUnderTest:
        nonlocal made
        settings: dict[str, Any] = {
            "database_url": postgres_url,
            "queue_url": redis_url,
            "queue_prefix": redis_prefix,
            "spool_url": "database",
            "requeue_grace_seconds": 0,
        }
        settings.update(overrides)
        # Only the first creates the sending domain; the others share it.
        domains = ("example.test",) if made == 0 else ()
        made += 1
        return await postline_factory(domains=domains, **settings)

    return make


async def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll with a deadline: the worker applies breaker commands every couple of seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.05)


async def _flush(redis_url: str, prefix: str) -> int:
    client = aioredis.Redis.from_url(redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
        return int(await client.delete(*keys)) if keys else 0
    finally:
        await client.aclose()


async def test_api_process_accepts_and_a_worker_process_delivers(
    shared: Shared, fake_mx: FakeMX
) -> None:
    api = await shared(engine=False)
    worker = await shared()
    sent = await api.send(to="someone@dest.test")
    detail = await api.wait_for_status(sent["id"], ["delivered"])
    assert detail["recipients"][0]["status"] == "delivered"
    assert any(m.rcpt_tos == ["someone@dest.test"] for m in fake_mx.received)
    assert worker.services.queue is not api.services.queue


async def test_jobs_lost_with_redis_are_restored_from_the_database(
    shared: Shared, fake_mx: FakeMX, redis_url: str
) -> None:
    api = await shared(engine=False)
    ids = [(await api.send(to=f"r{i}@dest.test"))["id"] for i in range(5)]
    # Redis restarts empty: every job is gone, the database still holds the promise.
    assert await _flush(redis_url, api.settings.queue_prefix) > 0
    assert await api.services.queue.depth() == {}
    worker = await shared(engine=False)  # nothing delivers yet: every job is counted
    await housekeeping_pass(worker.services)
    assert await worker.services.queue.depth() == {"dest.test": 5}
    worker.start_engine()
    for email_id in ids:
        await api.wait_for_status(email_id, ["delivered"])
    assert sorted(m.rcpt_tos[0] for m in fake_mx.received) == sorted(
        f"r{i}@dest.test" for i in range(5)
    )


async def test_restoring_twice_makes_no_second_job(shared: Shared) -> None:
    api = await shared(engine=False)
    for i in range(3):
        await api.send(to=[f"a{i}@dest.test", f"b{i}@other.test"])
    before = await api.services.queue.depth()
    assert before == {"dest.test": 3, "other.test": 3}
    await housekeeping_pass(api.services)
    await housekeeping_pass(api.services)
    assert await api.services.queue.depth() == before


async def test_mail_accepted_while_redis_is_down_is_delivered_later(
    shared: Shared, fake_mx: FakeMX, caplog: pytest.LogCaptureFixture
) -> None:
    # This API process's queue points at a port where nothing listens.
    broken = await shared(engine=False, queue_url="redis://127.0.0.1:1/0")
    with caplog.at_level(logging.WARNING, logger="postline.accept"):
        sent = await broken.send(to="late@dest.test")
    assert sent["recipients"][0]["status"] == "queued"
    # Said once, with how many jobs housekeeping must restore and why (the error's type).
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "postline.accept"]
    assert warning == (
        "queue unavailable after commit; 1 jobs left for housekeeping to restore: ConnectionError"
    )
    worker = await shared()
    await housekeeping_pass(worker.services)
    await worker.wait_for_status(sent["id"], ["delivered"])
    assert [m.rcpt_tos for m in fake_mx.received] == [["late@dest.test"]]


async def test_a_breaker_opened_on_an_api_process_reaches_the_workers(
    shared: Shared, fake_mx: FakeMX
) -> None:
    api = await shared(engine=False)
    worker = await shared()
    response = await api.client.post(
        "/v1/destinations/dest.test/breaker", json={"state": "open"}, headers=api.auth()
    )
    assert response.status_code == 200, response.text
    assert response.json()["breaker"] == "open"
    await _until(lambda: worker.services.engine.breakers.view("dest.test").state == "open")
    listed = await api.client.get("/v1/destinations", headers=api.auth())
    states = {d["domain"]: d["breaker"] for d in listed.json()["data"]}
    assert states.get("dest.test") == "open"
    sent = await api.send(to="held@dest.test")
    await api.wait_for(
        sent["id"],
        lambda d: d["recipients"][0]["status"] == "deferred",
        what="a deferral without a connection",
    )
    assert fake_mx.received == []
    closed = await api.client.post(
        "/v1/destinations/dest.test/breaker", json={"state": "closed"}, headers=api.auth()
    )
    assert closed.json()["breaker"] == "closed"
    await _until(lambda: worker.services.engine.breakers.view("dest.test").state == "closed")
