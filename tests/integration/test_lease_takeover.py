"""A worker that lost its lease mid-delivery sends no final dot and records nothing.

Two engines share one store and queue. The first is stalled by a slow MX in
the middle of a transaction when its lease goes away (its heartbeat ends, as
when a worker stalls past its heartbeat timeout, and a sweep frees the job);
the second engine takes the job over and delivers it. The MX must end up
with exactly one copy, and the email with one attempt: the new owner's.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from postline.delivery.engine import Engine
from tests.harness import FakeMX
from tests.harness.polling import poll
from tests.harness.postline import Factory


def second_engine(first: Engine) -> Engine:
    """Another worker on the same store, queue and spool, with an owner of its own."""
    return Engine(
        db=first.db,
        queue=first.queue,
        spool=first.spool,
        router=first.router,
        delivery=first.delivery,
        recorder=first.recorder,
        metrics=first.metrics,
        settings=first.settings,
    )


@pytest.mark.parametrize("pipelining", [False, True], ids=["sequential", "pipelining"])
async def test_a_lost_lease_stops_before_the_final_dot(
    postline_factory: Factory,
    fake_mx: FakeMX,
    caplog: pytest.LogCaptureFixture,
    pipelining: bool,
) -> None:
    caplog.set_level(logging.WARNING, logger="postline.engine")
    # Heartbeats far apart: the first engine does not beat again during the test. One
    # delivery at a time: while its stalled one runs, it cannot lease the freed job
    # again before the second engine does (it does not know its heartbeat was ended).
    postline = await postline_factory(heartbeat_seconds=60, heartbeat_timeout=120, concurrency=1)
    fake_mx.pipelining = pipelining
    fake_mx.stall("rcpt", 1.0)  # every transaction waits at RCPT: the old owner is mid-way
    first = postline.services.engine
    queue = postline.services.queue
    sent = await postline.send(to="once@dest.test")
    await fake_mx.wait_for_connections(1)

    async def leased_by_first() -> bool:
        return await queue.in_flight() == {"dest.test": 1}

    await poll(leased_by_first, timeout=10, what="the first engine to hold the job")
    await queue.retire(first.owner)
    assert await queue.recover_expired() == 1

    stop = asyncio.Event()
    second = second_engine(first)
    running = asyncio.create_task(second.run(stop))
    try:
        detail = await postline.wait_for_status(sent["id"], ["delivered"])
        await poll(
            lambda: asyncio.sleep(0, not first._active),
            timeout=10,
            what="the first engine to end its delivery",
        )
    finally:
        stop.set()
        await asyncio.wait_for(running, timeout=30)
    assert len(fake_mx.received) == 1
    assert any("lease lost" in r.message for r in caplog.records)
    assert fake_mx.connections == 2  # the first engine's transaction was cut, not finished
    (recipient,) = detail["recipients"]
    assert recipient["attempts"] == 1
    assert [t["status"] for t in recipient["timeline"]] == ["delivered"]
    assert [e["type"] for e in detail["events"]] == ["email.queued", "email.delivered"]
    assert await queue.depth() == {}


async def test_a_running_engine_beats_and_says_goodbye_when_stopped(
    postline_factory: Factory,
) -> None:
    postline = await postline_factory()
    engine, queue = postline.services.engine, postline.services.queue

    async def beating() -> bool:
        return engine.owner in await queue.workers()

    await poll(beating, timeout=10, what="the engine's first heartbeat")
    await postline.stop_engine()
    assert engine.owner not in await queue.workers()


async def test_a_delivery_longer_than_its_lease_keeps_it(
    postline_factory: Factory, fake_mx: FakeMX, caplog: pytest.LogCaptureFixture
) -> None:
    """Slow RCPTs make the delivery last well past one lease, with a second worker
    polling the queue all along: the first renews its lease, so nobody takes over.
    An engine that did not renew would lose the job to the second one, which would
    connect again (the guard before the final dot would still keep it to one copy)."""
    caplog.set_level(logging.WARNING, logger="postline.engine")
    # Two recipients: nine seconds, past two leases. A lease of 4 s rather than 2: the
    # renewal every third of it, and the finish after the dot (the confirmation before
    # it leaves at least two thirds), must each fit in what is left, which on a loaded
    # 2-core machine running the suite in three workers 1.3 s did not always.
    postline = await postline_factory(lease_seconds=4)
    fake_mx.stall("rcpt", 4.5)
    second = second_engine(postline.services.engine)
    stop = asyncio.Event()
    running = asyncio.create_task(second.run(stop))
    try:
        sent = await postline.send(to=["one@dest.test", "two@dest.test"])
        detail = await postline.wait_until_final(sent["id"], timeout=60)
    finally:
        stop.set()
        await asyncio.wait_for(running, timeout=30)
    assert [r["status"] for r in detail["recipients"]] == ["delivered", "delivered"]
    assert len(fake_mx.received) == 1
    assert fake_mx.connections == 1  # no second worker took the job over
    assert all(r["attempts"] == 1 for r in detail["recipients"])
    assert not any("lease lost" in r.message for r in caplog.records)
