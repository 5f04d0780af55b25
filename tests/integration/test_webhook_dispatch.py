"""The webhook dispatcher under load and failure: its concurrency bound, endpoint health,
Retry-After, exhausted retries and replay, and two dispatchers sharing one store.

Events are written straight into the outbox (as the recorder does) so a large backlog
costs one INSERT instead of thousands of API calls; endpoints are registered through the
API and deliveries observed at a real HTTP receiver and through the API.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import insert, select

from postline.api.views import rfc3339
from postline.events.dispatcher import FAN_OUT_BATCH, LEASE_MARGIN, LEASED_AHEAD, AttemptResult
from postline.ids import new_id
from postline.store.schema import events, webhook_attempts, webhook_deliveries, webhooks
from postline.store.types import utcnow
from postline.store.webhooks import DueDelivery
from tests.harness.clock import MovableClock
from tests.harness.polling import poll
from tests.harness.postline import Factory, PostlineUnderTest
from tests.harness.receiver import LoopbackOnly, WebhookReceiver

BACKLOG = 10_000  # drains in ~45 s on a 2-core machine


@dataclass(frozen=True)
class Arrival:
    at: float  # loop time when the request reached the handler
    webhook_id: str
    status: int


@dataclass
class TrackingReceiver(WebhookReceiver):
    """A WebhookReceiver that holds each request ``delay`` seconds and tracks concurrency."""

    delay: float = 0.0
    in_flight: int = 0
    max_in_flight: int = 0
    arrivals: list[Arrival] = field(default_factory=list)
    acknowledged: Counter[str] = field(default_factory=Counter)  # 2xx answers per webhook-id

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        at = asyncio.get_running_loop().time()
        headers = dict(scope["headers"])
        webhook_id = headers.get(b"webhook-id", b"").decode()
        status = 0

        async def capture(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)  # a slow endpoint, not a wait for work
            await super()._app(scope, receive, capture)
        finally:
            self.in_flight -= 1
        self.arrivals.append(Arrival(at, webhook_id, status))
        if 200 <= status < 300:
            self.acknowledged[webhook_id] += 1


Receivers = Callable[..., Awaitable[TrackingReceiver]]


@pytest_asyncio.fixture
async def receivers() -> AsyncIterator[Receivers]:
    """``await receivers(delay=0.02, default_status=500)``; all stopped after the test."""
    started: list[TrackingReceiver] = []

    async def make(**options: Any) -> TrackingReceiver:
        receiver = TrackingReceiver(**options)
        await receiver.start()
        started.append(receiver)
        return receiver

    yield make
    for receiver in started:
        await receiver.stop()


class CountingTransport(LoopbackOnly):
    """LoopbackOnly that also counts the requests one dispatcher sent."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent += 1
        return await super().handle_async_request(request)


class HoldingTransport(LoopbackOnly):
    """LoopbackOnly that holds every POST until ``go`` is set: the deliveries a
    dispatcher has started, by webhook-id, are ``held``."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[str] = []
        self.go = asyncio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.held.append(request.headers["webhook-id"])
        await self.go.wait()
        return await super().handle_async_request(request)


# --- helpers -----------------------------------------------------------------------------


async def register(pl: PostlineUnderTest, url: str, events_: list[str] | None = None) -> Any:
    response = await pl.client.post(
        "/v1/webhooks", json={"url": url, "events": events_ or ["*"]}, headers=pl.auth()
    )
    assert response.status_code == 201, response.text
    return response.json()


async def insert_events(
    pl: PostlineUnderTest, count: int, *, wake: bool = True, domain_id: str | None = None
) -> list[str]:
    """``count`` undispatched email.delivered events (of ``domain_id``) in the outbox, in
    one executemany; ``wake=False``: as another process writes them, unknown to this
    dispatcher."""
    now = utcnow()
    ids = [new_id("evt_") for _ in range(count)]
    rows: list[dict[str, Any]] = []
    for i, event_id in enumerate(ids):
        recipient = f"user{i}@dest.test"
        rows.append(
            {
                "id": event_id,
                "type": "email.delivered",
                "email_id": None,
                "recipient_id": None,
                "domain_id": domain_id,
                "sequence": i,
                "payload": {
                    "type": "email.delivered",
                    "created_at": rfc3339(now),
                    "data": {"recipient": recipient, "status": "delivered", "sequence": i},
                },
                "created_at": now,
                "dispatched_at": None,
            }
        )
    async with pl.services.db.write() as conn:
        await conn.execute(insert(events), rows)
    if wake:
        pl.services.dispatcher.wake()
    return ids


async def webhook(pl: PostlineUnderTest, webhook_id: str) -> dict[str, Any]:
    response = await pl.client.get(f"/v1/webhooks/{webhook_id}", headers=pl.auth())
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def deliveries(pl: PostlineUnderTest, webhook_id: str) -> list[dict[str, Any]]:
    url = f"/v1/webhooks/{webhook_id}/deliveries"
    response = await pl.client.get(url, params={"limit": 500}, headers=pl.auth())
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


async def one_delivery(pl: PostlineUnderTest, webhook_id: str) -> dict[str, Any]:
    (delivery,) = await deliveries(pl, webhook_id)
    return delivery


# --- the concurrency bound -----------------------------------------------------------------


async def drain_backlog(postline_factory: Factory, receivers: Receivers, count: int) -> None:
    pl = await postline_factory(
        engine=False, webhook_allow_private=True, webhook_concurrency=8, poll_interval=0.05
    )
    receiver = await receivers(delay=0.02)
    # Fan-out goes to the endpoints that exist then: register first, then fill the outbox.
    await register(pl, receiver.url, ["email.delivered"])
    ids = await insert_events(pl, count)

    loop = asyncio.get_running_loop()
    started = loop.time()
    pl.start_engine()
    await receiver.wait_until(
        lambda _: len(receiver.acknowledged) >= count,
        timeout=240,  # a busy 2-core machine; an idle one takes ~45 s
        what=f"{count} events acknowledged",
    )
    drained = loop.time() - started
    await pl.stop_engine()

    print(
        f"\n{count} events drained in {drained:.1f}s ({count / drained:.0f}/s) "
        f"with webhook_concurrency=8, 20 ms per request; max in flight "
        f"{receiver.max_in_flight}"
    )
    acknowledged = receiver.acknowledged
    assert set(acknowledged) == set(ids)
    twice = {i: n for i, n in acknowledged.items() if n > 1}
    assert twice == {}, f"{len(twice)} events acknowledged more than once"
    assert len(receiver.arrivals) == count  # and nothing else was sent
    assert receiver.max_in_flight <= 8, receiver.max_in_flight
    assert receiver.max_in_flight >= 2  # the pool was actually used


@pytest.mark.timeout(300)
async def test_backlog_of_10k_drains_once_each_within_the_concurrency_bound(
    postline_factory: Factory, receivers: Receivers
) -> None:
    await drain_backlog(postline_factory, receivers, BACKLOG)


@pytest.mark.parametrize(
    ("concurrency", "waiting_at_start"),
    [(4, False), (1, True)],
    ids=["four-senders", "one-sender-events-waiting-at-start"],
)
async def test_a_backlog_drains_without_waiting_for_a_poll(
    postline_factory: Factory, receivers: Receivers, concurrency: int, waiting_at_start: bool
) -> None:
    """Senders with room ask for the next lease themselves while more is due: with a poll
    interval of an hour, a stall waiting for the poll would never end. With one sender,
    the lease it asks for is of its one free slot; events already in the outbox when the
    dispatcher starts go out in its first pass, and those beyond its first fan-out batch
    in the passes straight after."""
    count = FAN_OUT_BATCH + 1 if waiting_at_start else 300
    pl = await postline_factory(
        engine=False,
        webhook_allow_private=True,
        webhook_concurrency=concurrency,
        poll_interval=3600,
    )
    receiver = await receivers()
    await register(pl, receiver.url, ["email.delivered"])
    if waiting_at_start:
        ids = await insert_events(pl, count)
        pl.start_engine()
    else:
        pl.start_engine()
        ids = await insert_events(pl, count)  # wakes the dispatcher, as the recorder does
    await receiver.wait_until(
        lambda _: len(receiver.acknowledged) >= count, timeout=120, what=f"{count} events"
    )
    await pl.stop_engine()
    assert set(receiver.acknowledged) == set(ids)
    assert len(receiver.arrivals) == count


async def test_one_pass_fans_out_one_batch_and_leases_what_fits(
    postline_factory: Factory, receivers: Receivers
) -> None:
    """One pass, called by hand (the dispatcher is not running): with nothing in the
    outbox it finds no work; then it fans out one batch of the oldest events, a
    delivery each, and leases what fits in the work queue; with the work queue full, the
    next pass fans out the rest and leases nothing."""
    pl = await postline_factory(engine=False, webhook_allow_private=True)
    receiver = await receivers()
    endpoint = await register(pl, receiver.url, ["email.delivered"])
    dispatcher = pl.services.dispatcher
    work: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)
    assert await dispatcher.pass_once(work) is False

    ids = await insert_events(pl, FAN_OUT_BATCH + 1, wake=False)

    async def undispatched() -> set[str]:
        query = select(events.c.id).where(events.c.dispatched_at.is_(None))
        async with pl.services.db.read() as conn:
            return set((await conn.execute(query)).scalars()) & set(ids)

    async def fanned_out() -> list[Any]:
        query = select(
            webhook_deliveries.c.id, webhook_deliveries.c.event_id, webhook_deliveries.c.webhook_id
        )
        async with pl.services.db.read() as conn:
            return list(await conn.execute(query))

    assert await dispatcher.pass_once(work) is True
    assert await undispatched() == {max(ids)}  # the newest waits for the next batch
    rows = await fanned_out()
    assert sorted(row.event_id for row in rows) == sorted(ids)[:FAN_OUT_BATCH]
    assert {row.webhook_id for row in rows} == {endpoint["id"]}
    assert all(row.id.startswith("whd_") for row in rows), rows[0]
    assert work.qsize() == 1
    leased = work.get_nowait()
    assert leased.id in {row.id for row in rows}

    work.put_nowait(leased)  # the work queue full again
    assert await dispatcher.pass_once(work) is True
    assert await undispatched() == set()
    assert len(await fanned_out()) == FAN_OUT_BATCH + 1
    assert work.qsize() == 1


async def test_events_written_without_a_wake_go_out_at_the_next_poll(
    postline_factory: Factory, receivers: Receivers
) -> None:
    """Events another process wrote (no wake here) are found by the poll, after passes
    that were busy and passes that found nothing."""
    pl = await postline_factory(engine=False, webhook_allow_private=True)
    receiver = await receivers()
    await register(pl, receiver.url, ["email.delivered"])
    pl.start_engine()
    for round_ in (1, 2):
        (event_id,) = await insert_events(pl, 1, wake=False)
        await receiver.wait_until(
            lambda _: event_id in receiver.acknowledged,  # noqa: B023
            timeout=30,
            what=f"event {round_}, found by the poll",
        )
    await pl.stop_engine()


async def test_an_endpoint_of_a_domain_hears_only_that_domains_events(
    postline_factory: Factory,
) -> None:
    """An endpoint made with a domain's key gets deliveries of that domain's events only;
    one made with an account-wide key gets every event's. (One fan-out, called by hand.)"""
    pl = await postline_factory(engine=False, webhook_allow_private=True)
    created = await pl.client.post(
        "/v1/api-keys", json={"name": "s", "domain": "example.test"}, headers=pl.auth()
    )
    assert created.status_code == 201, created.text
    everywhere = await register(pl, "http://127.0.0.1:9/all", ["email.delivered"])
    response = await pl.client.post(
        "/v1/webhooks",
        json={"url": "http://127.0.0.1:9/mine", "events": ["email.delivered"]},
        headers=pl.auth(created.json()["key"]),
    )
    assert response.status_code == 201, response.text
    mine = response.json()
    query = select(webhooks.c.domain_id).where(webhooks.c.id == mine["id"])
    async with pl.services.db.read() as conn:
        domain_id = (await conn.execute(query)).scalar_one()
    assert domain_id is not None
    (of_domain,) = await insert_events(pl, 1, domain_id=domain_id, wake=False)
    (of_none,) = await insert_events(pl, 1, wake=False)

    assert await pl.services.dispatcher.pass_once(asyncio.Queue(maxsize=10)) is True
    fanned = select(webhook_deliveries.c.event_id, webhook_deliveries.c.webhook_id)
    async with pl.services.db.read() as conn:
        pairs = {tuple(row) for row in await conn.execute(fanned)}
    assert pairs == {
        (of_domain, everywhere["id"]),
        (of_domain, mine["id"]),
        (of_none, everywhere["id"]),
    }


async def test_the_dispatchers_own_transport_sends_over_its_lanes(
    postline_factory: Factory, receivers: Receivers
) -> None:
    """Without a transport of the test's (as ``serve`` runs it), the dispatcher sends over
    its own pooled lanes (``events.lanes``), each sender on its lane; here to a receiver
    on loopback."""
    pl = await postline_factory(engine=False, webhook_allow_private=True, webhook_concurrency=4)
    pl.services.dispatcher.transport = None
    receiver = await receivers()
    await register(pl, receiver.url, ["email.delivered"])
    ids = await insert_events(pl, 8)
    pl.start_engine()
    await receiver.wait_until(
        lambda _: len(receiver.acknowledged) >= len(ids), timeout=30, what="8 events"
    )
    await pl.stop_engine()
    assert set(receiver.acknowledged) == set(ids)
    assert len(receiver.arrivals) == len(ids)


async def test_an_idle_dispatcher_answers_a_wake_and_a_stop_at_once(
    postline_factory: Factory, receivers: Receivers
) -> None:
    """With a poll interval of an hour, a dispatcher with nothing to do waits for a wake or
    a stop: an event written with a wake (as the recorder does) goes out at once, and a stop
    ends the dispatcher at once (``serve``'s shutdown). The first event is in the outbox
    before the start, so the second arrives while the dispatcher waits, its passes done."""
    pl = await postline_factory(engine=False, webhook_allow_private=True, poll_interval=3600)
    receiver = await receivers()
    endpoint = await register(pl, receiver.url, ["email.delivered"])

    async def goes_out(event_id: str, count: int) -> None:
        await receiver.wait_until(
            lambda _: event_id in receiver.acknowledged,
            timeout=30,
            what=f"event {count}, without waiting for the poll",
        )

        async def recorded() -> bool:
            found = await deliveries(pl, endpoint["id"])
            return len(found) == count and all(d["status"] == "succeeded" for d in found)

        await poll(recorded, timeout=30, what=f"delivery {count} to be recorded")

    (first,) = await insert_events(pl, 1)
    pl.start_engine()
    await goes_out(first, 1)
    (second,) = await insert_events(pl, 1)
    await goes_out(second, 2)

    dispatcher = pl.dispatcher_task
    assert dispatcher is not None
    pl.stop.set()

    async def stopped() -> bool:
        return dispatcher.done()

    await poll(stopped, timeout=10, what="the dispatcher to stop, without waiting for the poll")
    await pl.stop_engine()


async def test_a_wake_during_an_idle_pass_is_not_lost(
    postline_factory: Factory, receivers: Receivers
) -> None:
    """Events written with a wake while a pass that found nothing is ending (after its
    read of the outbox) go out at once, not at the next poll (an hour here): the wake is
    kept for the wait that follows the pass. The race is made certain by writing the
    event at the end of the dispatcher's first idle pass."""
    pl = await postline_factory(engine=False, webhook_allow_private=True, poll_interval=3600)
    receiver = await receivers()
    await register(pl, receiver.url, ["email.delivered"])
    dispatcher = pl.services.dispatcher
    pass_once = dispatcher.pass_once
    written: list[str] = []

    async def pass_with_a_late_writer(work: Any, *, fan_out: bool = True) -> bool:
        busy = await pass_once(work, fan_out=fan_out)
        if not busy and not written:
            written.extend(await insert_events(pl, 1))  # with a wake, as the recorder does
        return busy

    dispatcher.pass_once = pass_with_a_late_writer  # type: ignore[method-assign]

    async def idle_pass_ended() -> bool:
        return bool(written)

    pl.start_engine()
    await poll(idle_pass_ended, timeout=30, what="the first idle pass")
    await receiver.wait_until(
        lambda _: written[0] in receiver.acknowledged,
        timeout=30,
        what="the event written during the idle pass, without waiting for the poll",
    )
    await pl.stop_engine()


async def test_a_redirect_is_not_followed(postline_factory: Factory, receivers: Receivers) -> None:
    """A 307 is the endpoint's answer, recorded and retried: the POST never goes to the
    address it names (which the endpoint's check never saw)."""
    pl = await postline_factory(webhook_allow_private=True, webhook_retry_schedule="3600")
    elsewhere = await receivers()
    redirecting = await receivers(extra_headers={"Location": elsewhere.url})
    redirecting.fail_next(1, 307)
    endpoint = await register(pl, redirecting.url, ["email.delivered"])
    await insert_events(pl, 1)

    async def attempted() -> dict[str, Any] | None:
        found = await deliveries(pl, endpoint["id"])
        return found[0] if found and found[0]["attempts"] else None

    delivery = await poll(attempted, timeout=30, what="the first attempt to be recorded")
    assert (delivery["status"], delivery["response_code"]) == ("pending", 307), delivery
    assert [a.status for a in redirecting.arrivals] == [307]
    assert elsewhere.arrivals == []


async def test_a_pass_that_fails_is_logged_once_and_retried_until_it_works(
    postline_factory: Factory, receivers: Receivers, caplog: pytest.LogCaptureFixture
) -> None:
    """The store refuses the fan-out (a SQLite trigger on the outbox): the dispatcher
    says so once with the cause, keeps trying with backoff, says when it works again,
    and the event goes out. Its second try waits the backoff's first step (0.5 s, give or
    take a fifth): a loop that tried again at once would ask a failing store as fast as it
    can answer. (Nothing wakes the dispatcher meanwhile: the event's wake came before its
    first pass.)"""
    caplog.set_level(logging.DEBUG, logger="postline")
    pl = await postline_factory(engine=False, webhook_allow_private=True)
    receiver = await receivers()
    await register(pl, receiver.url, ["email.delivered"])
    async with pl.services.db.write() as conn:
        await conn.exec_driver_sql(
            "CREATE TRIGGER refuse_fan_out BEFORE UPDATE ON events"
            " BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
    (event_id,) = await insert_events(pl, 1)
    pl.start_engine()

    def said(start: str, level: int = logging.DEBUG) -> list[logging.LogRecord]:
        return [
            r
            for r in caplog.records
            if r.levelno >= level and r.name == "postline" and r.getMessage().startswith(start)
        ]

    async def failed_twice() -> list[logging.LogRecord]:
        return said("webhook dispatch failed again (2): ")

    (second,) = await poll(failed_twice, timeout=30, what="the second failed pass")
    async with pl.services.db.write() as conn:
        await conn.exec_driver_sql("DROP TRIGGER refuse_fan_out")
    await receiver.wait_until(
        lambda _: event_id in receiver.acknowledged, timeout=30, what="the event"
    )
    await pl.stop_engine()
    (first,) = said("webhook dispatch failed", logging.WARNING)
    assert first.getMessage() == (
        "webhook dispatch failed, retrying with backoff: IntegrityError: refused"
    )
    assert second.getMessage() == "webhook dispatch failed again (2): IntegrityError: refused"
    assert second.created - first.created >= 0.39, (first.created, second.created)
    (again,) = [r.getMessage() for r in said("webhook dispatch works again after ")]
    tries = again.removeprefix("webhook dispatch works again after ").removesuffix(" failed tries")
    assert tries.isdigit() and int(tries) >= 2, again


# --- stopping --------------------------------------------------------------------------------


async def leases(pl: PostlineUnderTest) -> dict[str, datetime | None]:
    """Each delivery's ``lease_until``, by its event (the webhook-id it is sent with)."""
    query = select(webhook_deliveries.c.event_id, webhook_deliveries.c.lease_until)
    async with pl.services.db.read() as conn:
        return {row.event_id: row.lease_until for row in await conn.execute(query)}


#: What the work queue of a dispatcher with two senders holds.
QUEUED = 2 * LEASED_AHEAD


async def full_work_queue(
    postline_factory: Factory, receivers: Receivers
) -> tuple[PostlineUnderTest, HoldingTransport, list[str]]:
    """A running dispatcher whose two senders hold a POST each while ``LEASED_AHEAD``
    more per sender wait in its full work queue, with 10 events more than fit."""
    transport = HoldingTransport()
    pl = await postline_factory(
        engine=False,
        webhook_allow_private=True,
        webhook_concurrency=2,
        webhook_transport=transport,
        shutdown_timeout=0.2,  # the drain the stop waits for cannot end: the POSTs are held
    )
    receiver = await receivers()
    await register(pl, receiver.url, ["email.delivered"])
    ids = await insert_events(pl, QUEUED + 2 + 10)
    pl.start_engine()

    async def queue_full() -> bool:
        leased = [e for e, until in (await leases(pl)).items() if until is not None]
        return len(transport.held) == 2 and len(leased) == QUEUED + 2

    await poll(queue_full, timeout=30, what="two POSTs started and the work queue full")
    return pl, transport, ids


async def test_a_stopped_dispatcher_gives_back_what_it_leased_but_did_not_start(
    postline_factory: Factory, receivers: Receivers
) -> None:
    """The leased deliveries left in the work queue are given back (no lease) for
    another worker to send at once; the two started keep their lease, since their POST
    may have arrived."""
    pl, transport, ids = await full_work_queue(postline_factory, receivers)
    await pl.stop_engine()

    after = await leases(pl)
    assert set(after) == set(ids)
    still_leased = {e for e, until in after.items() if until is not None}
    assert still_leased == set(transport.held)


async def test_a_dispatcher_that_cannot_give_back_its_leases_still_stops(
    postline_factory: Factory, receivers: Receivers
) -> None:
    """When the store refuses the release (here a SQLite trigger), the dispatcher stops
    without an error and the leases are left to lapse: nothing is lost, only delayed."""
    pl, transport, _ = await full_work_queue(postline_factory, receivers)
    async with pl.services.db.write() as conn:
        await conn.exec_driver_sql(
            "CREATE TRIGGER refuse_release BEFORE UPDATE ON webhook_deliveries"
            " BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
    await pl.stop_engine()  # fails the test if the dispatcher crashed

    still_leased = [e for e, until in (await leases(pl)).items() if until is not None]
    assert len(still_leased) == QUEUED + 2
    assert set(transport.held) < set(still_leased)


async def test_a_sender_sends_on_while_its_attempts_wait_to_be_recorded(
    postline_factory: Factory, receivers: Receivers, database_url: str
) -> None:
    """One sender, its first POST held while the rest are leased; then the store takes
    no write (the test holds a write transaction, on PostgreSQL one that locks the
    attempts' table) and the POSTs go. Every leased delivery reaches the receiver, none
    recorded yet; once the store takes writes again, each is recorded as succeeded. A
    sender that waited for each record sent one POST, then waited."""
    transport = HoldingTransport()
    pl = await postline_factory(
        engine=False,
        database_url=database_url,
        webhook_allow_private=True,
        webhook_concurrency=1,
        webhook_transport=transport,
    )
    receiver = await receivers()
    endpoint = await register(pl, receiver.url, ["email.delivered"])
    ids = await insert_events(pl, 1 + LEASED_AHEAD)
    pl.start_engine()

    async def all_leased() -> bool:
        leased = [e for e, until in (await leases(pl)).items() if until is not None]
        return len(transport.held) == 1 and len(leased) == len(ids)

    await poll(all_leased, timeout=30, what="one POST started and the rest leased")
    held, release = asyncio.Event(), asyncio.Event()

    async def hold_the_store() -> None:
        async with pl.services.db.write() as conn:
            if conn.dialect.name == "postgresql":
                await conn.exec_driver_sql("LOCK TABLE webhook_attempts IN EXCLUSIVE MODE")
            held.set()
            await release.wait()

    holder = asyncio.create_task(hold_the_store())
    try:
        await asyncio.wait_for(held.wait(), timeout=30)
        transport.go.set()
        await receiver.wait_until(
            lambda _: set(receiver.acknowledged) == set(ids),
            timeout=30,
            what="every leased delivery while the store takes no write",
        )
        # From the store: the API's authentication writes, which the held store refuses.
        async with pl.services.db.read() as conn:
            query = select(webhook_deliveries.c.attempts)
            assert set((await conn.execute(query)).scalars()) == {0}
    finally:
        release.set()
        await holder

    async def statuses() -> set[str] | None:
        found = {d["status"] for d in await deliveries(pl, endpoint["id"])}
        return found if found == {"succeeded"} else None

    await poll(statuses, timeout=30, what="every attempt recorded")
    assert sorted(receiver.acknowledged.values()) == [1] * len(ids)
    await pl.stop_engine()


async def test_a_delivery_whose_lease_would_lapse_during_its_post_waits_for_a_new_lease(
    postline_factory: Factory, receivers: Receivers, caplog: pytest.LogCaptureFixture
) -> None:
    """One sender held on its first POST while the rest wait, leased, in its work queue;
    the dispatcher's clock then moves until their leases have less left than a POST may
    take (``webhook_timeout`` and ``LEASE_MARGIN``): another worker could lease them
    again before such a POST ended. None is sent on that lease; each is sent once, after
    its lease lapsed and it was leased again."""
    clock = MovableClock()
    sent_at: dict[str, datetime] = {}

    class ClockedTransport(HoldingTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            sent_at[request.headers["webhook-id"]] = clock()
            return await super().handle_async_request(request)

    transport = ClockedTransport()
    pl = await postline_factory(
        engine=False,
        webhook_allow_private=True,
        webhook_concurrency=1,
        webhook_transport=transport,
        clock=clock,
    )
    receiver = await receivers()
    await register(pl, receiver.url, ["email.delivered"])
    ids = await insert_events(pl, 1 + LEASED_AHEAD)
    pl.start_engine()

    async def all_leased() -> dict[str, datetime] | None:
        found = {e: until for e, until in (await leases(pl)).items() if until is not None}
        return found if len(transport.held) == 1 and len(found) == len(ids) else None

    first_leases = await poll(all_leased, timeout=30, what="one POST started, the rest leased")
    waiting = set(ids) - set(transport.held)
    lapse = max(first_leases[e] for e in waiting)
    timeout = timedelta(seconds=pl.services.settings.webhook_timeout)
    # Less left of every waiting lease than a POST and the margin: the lease is kept, but
    # the POST must not start on it.
    clock.offset = lapse - timeout - LEASE_MARGIN / 2 - clock()
    caplog.set_level(logging.INFO, logger="postline.webhooks")
    transport.go.set()

    async def passed_over() -> bool:
        said = [r.getMessage() for r in caplog.records if "waited past its lease" in r.getMessage()]
        return len(said) == len(waiting)

    await poll(passed_over, timeout=30, what="the waiting deliveries to be passed over")
    assert set(sent_at) == set(transport.held)
    moved_on = lapse + timedelta(seconds=1)
    clock.offset += moved_on - clock()
    await receiver.wait_until(
        lambda _: set(receiver.acknowledged) == set(ids),
        timeout=30,
        what="the waiting deliveries, on new leases",
    )
    assert sorted(receiver.acknowledged.values()) == [1] * len(ids)
    assert all(sent_at[e] >= moved_on for e in waiting), sent_at
    await pl.stop_engine()


async def test_a_sender_whose_delivery_cannot_be_recorded_logs_it_and_goes_on(
    postline_factory: Factory, receivers: Receivers, caplog: pytest.LogCaptureFixture
) -> None:
    """One sender; the store refuses the first attempt's record (a SQLite trigger): the
    error names the delivery, and the same sender sends the next delivery once the store
    takes records again."""
    caplog.set_level(logging.ERROR, logger="postline.webhooks")
    pl = await postline_factory(engine=False, webhook_allow_private=True, webhook_concurrency=1)
    receiver = await receivers()
    endpoint = await register(pl, receiver.url, ["email.delivered"])
    async with pl.services.db.write() as conn:
        await conn.exec_driver_sql(
            "CREATE TRIGGER refuse_attempts BEFORE INSERT ON webhook_attempts"
            " BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
    pl.start_engine()
    await insert_events(pl, 1)

    async def failed() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "postline.webhooks"]

    (logged,) = await poll(failed, timeout=30, what="the sender to log the failed record")
    (first,) = await deliveries(pl, endpoint["id"])
    assert logged == f"webhook delivery {first['id']} failed unexpectedly"
    assert first["attempts"] == 0, first  # not recorded: its lease lapses, then a retry

    async with pl.services.db.write() as conn:
        await conn.exec_driver_sql("DROP TRIGGER refuse_attempts")
    (second_event,) = await insert_events(pl, 1)
    await receiver.wait_until(
        lambda _: second_event in receiver.acknowledged, timeout=30, what="the next delivery"
    )
    await pl.stop_engine()


# --- endpoint health -----------------------------------------------------------------------


async def test_endpoint_failing_continuously_is_disabled_and_then_left_alone(
    postline_factory: Factory, receivers: Receivers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="postline.webhooks")
    pl = await postline_factory(
        webhook_allow_private=True,
        webhook_disable_after_seconds=1,
        webhook_retry_schedule="0.3,0.3,0.3,0.3,0.3,0.3,0.3",
    )
    failing = await receivers(default_status=500)
    healthy = await receivers()
    endpoint = await register(pl, failing.url, ["email.delivered"])
    probe = await register(pl, healthy.url, ["email.bounced"])  # never matches the event
    (event_id,) = await insert_events(pl, 1)

    async def disabled() -> dict[str, Any] | None:
        body = await webhook(pl, endpoint["id"])
        return None if body["enabled"] else body

    body = await poll(disabled, timeout=15, what="the failing endpoint to be disabled")
    assert "failing continuously" in body["disabled_reason"], body
    warned = [r.getMessage() for r in caplog.records if "disabled" in r.getMessage()]
    assert warned == [f"webhook_id={endpoint['id']} disabled: {body['disabled_reason']}"]
    delivery = await one_delivery(pl, endpoint["id"])
    attempts = delivery["attempts"]
    # Disabled because of the period (about four 0.3 s retries), not because retries ran out.
    assert 2 <= attempts < 8, delivery
    assert delivery["status"] == "pending", delivery
    assert [a.status for a in failing.arrivals] == [500] * attempts
    assert {a.webhook_id for a in failing.arrivals} == {event_id}

    # Let the delivery fall due again, then prove the dispatcher made passes since: a test
    # event to another endpoint goes through. Twice, and nothing more reaches the failing one.
    next_at = datetime.fromisoformat(delivery["next_attempt_at"].replace("Z", "+00:00"))
    await poll(
        lambda: asyncio.sleep(0, result=utcnow() > next_at + timedelta(seconds=0.1)),
        timeout=5,
        what="the disabled endpoint's delivery to fall due",
    )
    for round_ in (1, 2):
        sent = await pl.client.post(f"/v1/webhooks/{probe['id']}/test", headers=pl.auth())
        assert sent.status_code == 202, sent.text
        await healthy.wait_until(lambda hs: len(hs) >= round_, what=f"probe {round_}")  # noqa: B023
    assert len(failing.arrivals) == attempts, failing.arrivals
    assert (await one_delivery(pl, endpoint["id"]))["attempts"] == attempts
    assert (await webhook(pl, endpoint["id"]))["enabled"] is False


async def test_an_endpoints_health_after_each_kind_of_answer(postline_factory: Factory) -> None:
    """What the dispatcher writes to the endpoint after an attempt, answer by answer, at
    the edge of the period (which the real-time test above only passes by some amount):
    nothing after a success of a healthy endpoint (no write at all), health restored
    after a success of a failing one, failure counted from its first attempt, disabled
    after failing for the whole period and not a microsecond sooner, disabled on 410
    at once, each with its reason. (Mutation testing: no test wrote a success after a
    failure, a period ended to the microsecond, or read the 410 reason whole.)"""
    period = 3600
    pl = await postline_factory(engine=False, webhook_disable_after_seconds=period)
    dispatcher = pl.services.dispatcher
    now = utcnow()
    since = now - timedelta(seconds=period)

    def health(code: int | None, failing_since: datetime | None) -> dict[str, Any]:
        row = DueDelivery(
            id="wdl_1",
            event_id="evt_1",
            webhook_id="wh_1",
            attempts=1,
            payload={},
            url="http://127.0.0.1/hook",
            secret="whsec_x",
            previous_secret=None,
            secret_rotated_at=None,
            enabled=True,
            failing_since=failing_since,
        )
        error = "ConnectError: refused" if code is None else None
        return dispatcher._endpoint_health(row, AttemptResult(code, None, error, 5), now)

    assert health(200, None) == {}
    assert health(204, since) == {"failing_since": None}
    assert health(500, None) == {"failing_since": now}
    assert health(None, None) == {"failing_since": now}
    assert health(500, since + timedelta(microseconds=1)) == {}
    failed_for_the_period = {
        "enabled": False,
        "disabled_reason": f"failing continuously since {since.isoformat()}",
        "updated_at": now,
    }
    assert health(503, since) == failed_for_the_period
    assert health(None, since) == failed_for_the_period
    gone = {
        "enabled": False,
        "disabled_reason": "the endpoint answered 410 Gone",
        "updated_at": now,
    }
    assert health(410, None) == gone
    assert health(410, now) == gone


@pytest.mark.parametrize(
    ("status", "form"),
    [(429, "seconds"), (503, "seconds"), (503, "http-date")],
)
async def test_retry_after_is_honoured(
    postline_factory: Factory, receivers: Receivers, status: int, form: str
) -> None:
    pl = await postline_factory(webhook_allow_private=True, webhook_retry_schedule="0.1,0.1")
    loop = asyncio.get_running_loop()
    moment = (utcnow() + timedelta(seconds=4)).replace(microsecond=0)  # whole seconds only
    # When the date comes, on the loop's clock the arrivals are timed by.
    date_at = loop.time() + (moment - utcnow()).total_seconds()
    retry_after = "2" if form == "seconds" else format_datetime(moment, usegmt=True)
    receiver = await receivers(extra_headers={"Retry-After": retry_after})
    receiver.fail_next(1, status)
    endpoint = await register(pl, receiver.url, ["email.delivered"])
    (event_id,) = await insert_events(pl, 1)

    await receiver.wait_until(lambda hs: len(hs) >= 2, timeout=10, what="the retry")
    first, second = receiver.arrivals[:2]
    gap = second.at - first.at
    print(f"\n{status} Retry-After: {retry_after} -> retried {gap:.2f}s after the first attempt")
    assert (first.status, second.status) == (status, 200)
    assert first.webhook_id == second.webhook_id == event_id
    # Not before the time the answer named: 2 s after it, or the date (however long the
    # first attempt took to come, on a loaded machine).
    earliest = first.at + 2.0 if form == "seconds" else date_at
    assert second.at >= earliest - 0.05, f"retried after {gap:.2f}s despite {retry_after}"
    assert second.at < max(earliest, first.at) + 4.0, f"retried only after {gap:.2f}s"
    delivery = await poll(
        lambda: _settled(pl, endpoint["id"]), timeout=5, what="the delivery to settle"
    )
    assert (delivery["status"], delivery["attempts"]) == ("succeeded", 2), delivery


async def always_503(
    postline_factory: Factory, receivers: Receivers, schedule: str
) -> tuple[PostlineUnderTest, TrackingReceiver, Any, str]:
    """Postline with this webhook retry schedule, an endpoint that answers 503 to every
    POST, and one event for it."""
    pl = await postline_factory(webhook_allow_private=True, webhook_retry_schedule=schedule)
    receiver = await receivers(default_status=503)
    endpoint = await register(pl, receiver.url, ["email.delivered"])
    (event_id,) = await insert_events(pl, 1)
    return pl, receiver, endpoint, event_id


async def test_each_retry_waits_its_own_step_of_the_schedule(
    postline_factory: Factory, receivers: Receivers
) -> None:
    """The first retry waits the first step (0.2 s), the second the second (an hour)."""
    pl, receiver, endpoint, _ = await always_503(postline_factory, receivers, "0.2,3600")

    async def retried() -> dict[str, Any] | None:
        found = await deliveries(pl, endpoint["id"])
        return found[0] if found and found[0]["attempts"] == 2 else None

    delivery = await poll(retried, timeout=30, what="the first retry, 0.2 s after the try")
    assert delivery["status"] == "pending", delivery
    next_at = datetime.fromisoformat(delivery["next_attempt_at"].replace("Z", "+00:00"))
    assert next_at - utcnow() > timedelta(minutes=55), delivery
    assert len(receiver.arrivals) == 2


async def test_each_attempt_records_the_answer_or_the_error(
    postline_factory: Factory, receivers: Receivers
) -> None:
    """One event, two endpoints: one answers 503 ("nope"), nothing listens at the
    other. Each attempt's row keeps the answer's code and body, or the error."""
    pl = await postline_factory(webhook_allow_private=True, webhook_retry_schedule="3600")
    answering = await receivers(default_status=503)
    async with TrackingReceiver() as gone:
        pass  # its port is closed now
    refusing = await register(pl, answering.url, ["email.delivered"])
    unreachable = await register(pl, gone.url, ["email.delivered"])
    await insert_events(pl, 1)

    async def recorded() -> list[Any] | None:
        query = select(
            webhook_deliveries.c.webhook_id,
            webhook_attempts.c.response_code,
            webhook_attempts.c.response_body,
            webhook_attempts.c.error,
        ).join(webhook_attempts, webhook_attempts.c.delivery_id == webhook_deliveries.c.id)
        async with pl.services.db.read() as conn:
            rows = list(await conn.execute(query))
        return rows if len(rows) == 2 else None

    rows = {row.webhook_id: row for row in await poll(recorded, timeout=30, what="2 attempts")}
    answered = rows[refusing["id"]]
    assert (answered.response_code, answered.response_body, answered.error) == (503, "nope", None)
    assert (await one_delivery(pl, refusing["id"]))["response_body"] == "nope"
    failed = rows[unreachable["id"]]
    assert (failed.response_code, failed.response_body) == (None, None)
    assert failed.error.startswith("ConnectError: "), failed.error


async def _settled(pl: PostlineUnderTest, webhook_id: str) -> dict[str, Any] | None:
    """The endpoint's only delivery once it is no longer pending (None before fan-out too)."""
    found = await deliveries(pl, webhook_id)
    assert len(found) <= 1, found
    return found[0] if found and found[0]["status"] != "pending" else None


async def test_exhausted_retries_fail_then_replay_sends_the_same_webhook_id(
    postline_factory: Factory, receivers: Receivers
) -> None:
    pl, receiver, endpoint, event_id = await always_503(postline_factory, receivers, "0.1,0.1")

    delivery = await poll(
        lambda: _settled(pl, endpoint["id"]), timeout=10, what="the delivery to give up"
    )
    assert delivery["status"] == "failed", delivery
    assert delivery["attempts"] == 3, delivery
    assert delivery["response_code"] == 503, delivery
    assert delivery["event_id"] == event_id
    assert [(a.webhook_id, a.status) for a in receiver.arrivals] == [(event_id, 503)] * 3

    receiver.default_status = 200
    replay = await pl.client.post(
        f"/v1/webhooks/{endpoint['id']}/deliveries/{delivery['id']}/replay", headers=pl.auth()
    )
    assert replay.status_code == 202, replay.text
    await receiver.wait_until(lambda hs: len(hs) >= 4, timeout=10, what="the replay")
    assert receiver.arrivals[3] == Arrival(receiver.arrivals[3].at, event_id, 200)
    replayed = await poll(
        lambda: _settled(pl, endpoint["id"]), timeout=5, what="the replay to be recorded"
    )
    assert (replayed["status"], replayed["attempts"]) == ("succeeded", 4), replayed
    assert replayed["response_code"] == 200, replayed
    assert len(receiver.arrivals) == 4


# --- two dispatchers -----------------------------------------------------------------------


async def test_two_dispatchers_on_one_store_never_double_send(
    postline_factory: Factory, receivers: Receivers, store_backend: str, database_url: str
) -> None:
    """Both backends (the ``database_url`` fixture of tests/conftest.py); some first
    attempts fail, so rescheduled deliveries are up for grabs by either dispatcher too."""
    count, refused = 500, 50
    settings = {
        "engine": False,
        "database_url": database_url,
        "webhook_allow_private": True,
        "webhook_concurrency": 8,
        "webhook_retry_schedule": "0.05,0.05,0.05",
    }
    transports = [CountingTransport(), CountingTransport()]
    first = await postline_factory(webhook_transport=transports[0], **settings)
    # example.test exists already
    second = await postline_factory(domains=(), webhook_transport=transports[1], **settings)
    assert first.settings.database_url == second.settings.database_url

    receiver = await receivers(delay=0.005)
    receiver.fail_next(refused, 503)
    await register(first, receiver.url, ["email.delivered"])
    ids = await insert_events(first, count)
    loop = asyncio.get_running_loop()
    started = loop.time()
    first.start_engine()
    second.start_engine()
    await receiver.wait_until(
        lambda _: len(receiver.acknowledged) >= count, timeout=60, what=f"{count} events"
    )
    drained = loop.time() - started
    # Stop both, so a late duplicate would have been sent by now.
    await first.stop_engine()
    await second.stop_engine()

    shares = [t.sent for t in transports]
    print(
        f"\n[{store_backend}] {count} events in {drained:.1f}s; sent by each dispatcher: {shares}"
    )
    acknowledged = receiver.acknowledged
    assert set(acknowledged) == set(ids)
    twice = sorted(i for i, n in acknowledged.items() if n > 1)
    assert twice == [], f"{len(twice)} events sent twice, e.g. {twice[:3]}"
    assert len(receiver.arrivals) == count + refused
    assert sum(a.status == 503 for a in receiver.arrivals) == refused
    assert all(shares), f"one dispatcher sent nothing: {shares}"


async def test_a_pass_that_took_everything_waits_for_the_next_wake(
    postline_factory: Factory, receivers: Receivers
) -> None:
    """An event written with a wake is fanned out and leased in one pass; the dispatcher
    then waits for the next wake instead of passing again at once: that pass found
    nothing, a write transaction holding SQLite's one lock after every pass when events
    come a few at a time. (A pass that may have left work passes again at once:
    ``test_one_pass_fans_out_one_batch_and_leases_what_fits``, the batches after it.)"""
    pl = await postline_factory(engine=False, webhook_allow_private=True, poll_interval=3600)
    receiver = await receivers()
    await register(pl, receiver.url, ["email.delivered"])
    dispatcher = pl.services.dispatcher
    pass_once = dispatcher.pass_once
    passes: list[bool | None] = []

    async def counted(work: Any, *, fan_out: bool = True) -> bool:
        passes.append(None)  # entered: a pass right after another is entered at once
        busy = await pass_once(work, fan_out=fan_out)
        passes[-1] = busy
        return busy

    dispatcher.pass_once = counted  # type: ignore[method-assign]

    async def first_pass_ended() -> bool:
        return passes == [False]

    pl.start_engine()
    await poll(first_pass_ended, timeout=30, what="the first, idle pass")
    (event_id,) = await insert_events(pl, 1)  # with a wake, as the recorder does
    await receiver.wait_until(
        lambda _: event_id in receiver.acknowledged, timeout=30, what="the event's webhook"
    )
    assert passes == [False, True]
    await pl.stop_engine()
