"""A cancelled email leaves the queue at once, and every final outcome is counted.

``postline queue status`` and ``postline_queue_depth`` read the queue's depth: a
cancelled email's job must not sit there until it comes due. And
``postline_recipient_outcomes_total`` counts every final status, the ones decided
without a delivery attempt (suppressed at accept, cancelled) included.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import update

from postline.store.schema import email_recipients, suppressions
from postline.store.types import utcnow
from tests.harness.postline import Factory, PostlineUnderTest


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


async def test_a_destination_with_a_recipient_still_waiting_keeps_its_job(
    postline_factory: Factory,
) -> None:
    """Cancelling never takes a job some recipient still needs: here one recipient at
    dest.test was attempted and waits for a retry, so it cannot be cancelled."""
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
        "b@dest.test": "deferred",
        "c@other.test": "cancelled",
    }
    assert await pl.services.queue.depth() == {"dest.test": 1}


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
