"""A cancelled email leaves the queue at once, and every final outcome is counted.

``postline queue status`` and ``postline_queue_depth`` read the queue's depth: a
cancelled email's job must not sit there until it comes due. And
``postline_recipient_outcomes_total`` counts every final status, the ones decided
without a delivery attempt (suppressed at accept, cancelled) included.

The operator's actions on a deferred recipient: ``POST /v1/emails/{id}/retry``
attempts it now rather than at its next attempt (the retry schedule here puts that
an hour away, so a delivery within the test's deadline is the retry's); cancel
cancels it, with an ``email.cancelled`` event, and its job leaves the queue so that
nothing delivers it later.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import update

from postline.store.schema import email_recipients, suppressions
from postline.store.types import utcnow
from tests.harness import FakeMX
from tests.harness.polling import poll
from tests.harness.postline import Factory, PostlineUnderTest

LATER = "later@dest.test"
DEFER = "451 4.3.0 please try again later"


@pytest.fixture(params=["embedded", pytest.param("redis", marks=pytest.mark.redis)])
def topology(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The embedded queue (SQLite), or Redis (PostgreSQL, a fresh key prefix)."""
    if request.param == "embedded":
        return {}
    return {
        "database_url": request.getfixturevalue("postgres_url"),
        "queue_url": request.getfixturevalue("redis_url"),
        "queue_prefix": request.getfixturevalue("redis_prefix"),
    }


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        if sample == name:
            return float(value)
    return 0.0


async def _metrics(pl: PostlineUnderTest) -> str:
    response = await pl.client.get("/metrics")
    assert response.status_code == 200, response.text
    return response.text


async def _cancel(pl: PostlineUnderTest, email_id: str) -> dict[str, Any]:
    response = await pl.client.post(f"/v1/emails/{email_id}/cancel", headers=pl.auth())
    assert response.status_code == 200, response.text
    detail: dict[str, Any] = response.json()
    return detail


async def test_a_cancelled_emails_jobs_leave_the_queue_at_once(
    postline_factory: Factory, topology: dict[str, Any]
) -> None:
    pl = await postline_factory(engine=False, **topology)
    later = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    scheduled = await pl.send(to=["a@dest.test", "b@other.test"], scheduled_at=later)
    queued = await pl.send(to="c@dest.test")
    assert await pl.services.queue.depth() == {"dest.test": 2, "other.test": 1}
    assert _sample(await _metrics(pl), "postline_queue_depth") == 3

    detail = await _cancel(pl, scheduled["id"])
    assert detail["status"] == "cancelled"
    assert await pl.services.queue.depth() == {"dest.test": 1}
    assert _sample(await _metrics(pl), "postline_queue_depth") == 1
    assert await pl.services.queue.body_refs() == {queued["id"]}

    await _cancel(pl, queued["id"])
    assert await pl.services.queue.depth() == {}
    assert _sample(await _metrics(pl), "postline_queue_depth") == 0


async def test_a_deferred_recipient_is_cancelled_with_the_rest(
    postline_factory: Factory,
) -> None:
    """One recipient at dest.test was attempted and waits for a retry: it is cancelled
    too, and no job is left for its destination."""
    pl = await postline_factory(engine=False)
    sent = await pl.send(to=["a@dest.test", "b@dest.test", "c@other.test"])
    async with pl.services.db.write() as conn:
        await conn.execute(
            update(email_recipients)
            .where(email_recipients.c.address == "b@dest.test")
            .values(status="deferred", attempts=1)
        )
    detail = await _cancel(pl, sent["id"])
    statuses = {r["address"]: r["status"] for r in detail["recipients"]}
    assert statuses == {
        "a@dest.test": "cancelled",
        "b@dest.test": "cancelled",
        "c@other.test": "cancelled",
    }
    assert await pl.services.queue.depth() == {}


async def test_outcome_metrics_count_suppressed_and_cancelled(postline_factory: Factory) -> None:
    pl = await postline_factory(engine=False)
    async with pl.services.db.write() as conn:
        domain_id = (await conn.exec_driver_sql("SELECT id FROM domains")).scalar_one()
        await conn.execute(
            suppressions.insert().values(
                id="sup_1",
                domain_id=domain_id,
                address="gone@dest.test",
                reason="manual",
                created_at=utcnow(),
            )
        )
    sent = await pl.send(to=["gone@dest.test", "a@dest.test", "b@dest.test"])
    assert [r["status"] for r in sent["recipients"]] == ["suppressed", "queued", "queued"]
    await _cancel(pl, sent["id"])
    text = await _metrics(pl)
    assert _sample(text, 'postline_recipient_outcomes_total{status="suppressed"}') == 1
    assert _sample(text, 'postline_recipient_outcomes_total{status="cancelled"}') == 2


async def _deferred(pl: PostlineUnderTest, email_id: str) -> None:
    """Deferred, and the worker has let go of the job (it records the outcome first)."""
    await pl.wait_for_status(email_id, ["deferred"])

    async def released() -> bool:
        return await pl.services.queue.in_flight() == {}

    await poll(released, timeout=15, what="the deferred job released")


async def _post(pl: PostlineUnderTest, email_id: str, action: str) -> tuple[int, Any]:
    response = await pl.client.post(f"/v1/emails/{email_id}/{action}", headers=pl.auth())
    return response.status_code, response.json()


async def test_retry_attempts_a_deferred_recipient_now(
    postline_factory: Factory, fake_mx: FakeMX, topology: dict[str, Any]
) -> None:
    pl = await postline_factory(retry_schedule="3600", **topology)
    fake_mx.on_rcpt(LATER, DEFER, "250 2.1.5 OK")
    sent = await pl.send(to=[LATER])
    await _deferred(pl, sent["id"])

    status, detail = await _post(pl, sent["id"], "retry")
    assert status == 200, detail
    (recipient,) = detail["recipients"]
    assert recipient["status"] == "deferred"
    final = await pl.wait_for_status(sent["id"], ["delivered"])
    assert final["recipients"][0]["attempts"] == 2
    (received,) = fake_mx.received
    assert received.rcpt_tos == [LATER]

    status, problem = await _post(pl, sent["id"], "retry")
    assert status == 409, problem
    assert "deferred" in problem["detail"]


async def test_cancel_takes_a_deferred_recipient_and_its_job(
    postline_factory: Factory, fake_mx: FakeMX, topology: dict[str, Any]
) -> None:
    pl = await postline_factory(retry_schedule="3600", **topology)
    fake_mx.on_rcpt(LATER, DEFER)
    sent = await pl.send(to=[LATER])
    await _deferred(pl, sent["id"])
    assert await pl.services.queue.depth() == {"dest.test": 1}

    status, detail = await _post(pl, sent["id"], "cancel")
    assert status == 200, detail
    assert detail["status"] == "cancelled"
    assert [r["status"] for r in detail["recipients"]] == ["cancelled"]
    (event,) = [e for e in detail["events"] if e["type"] == "email.cancelled"]
    assert event["recipient"] == LATER
    assert await pl.services.queue.depth() == {}, "no job is left to deliver it later"

    status, problem = await _post(pl, sent["id"], "retry")
    assert status == 409, problem
    status, problem = await _post(pl, sent["id"], "cancel")
    assert status == 409, problem
