"""Orphan spool cleanup: every branch, on the embedded and on the Redis queue.

``now`` is passed in ten days ahead, so every body already spooled is past
``max_age`` without waiting or touching file times.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
import pytest_asyncio

from postline.orphans import clean_orphans
from postline.queue.base import QueueError
from postline.queue.embedded import EmbeddedQueue
from postline.queue.redis import RedisQueue
from postline.spool.base import SpoolMissing, copy_ref
from postline.store.db import Database
from postline.store.types import utcnow
from tests.harness.postline import PostlineUnderTest

Factory = Callable[..., Awaitable[PostlineUnderTest]]
MAX_AGE = 5 * 24 * 3600.0


@pytest.fixture(params=["embedded", pytest.param("redis", marks=pytest.mark.redis)])
def topology(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Settings for the embedded queue (SQLite) or Redis (PostgreSQL, fresh key prefix)."""
    if request.param == "embedded":
        return {}
    return {
        "database_url": request.getfixturevalue("postgres_url"),
        "queue_url": request.getfixturevalue("redis_url"),
        "queue_prefix": request.getfixturevalue("redis_prefix"),
        "requeue_grace_seconds": 0,
    }


@pytest_asyncio.fixture
async def postline(topology: dict[str, Any], postline_factory: Factory) -> PostlineUnderTest:
    """Postline with its engine stopped, on the chosen queue."""
    return await postline_factory(engine=False, **topology)


async def _clean(pl: PostlineUnderTest, days_ahead: float = 10, retention: float = 0) -> Any:
    services = pl.services
    now = utcnow() + timedelta(days=days_ahead)
    return await clean_orphans(
        services.db,
        services.queue,
        services.spool,
        now,
        MAX_AGE,
        body_retention_seconds=retention,
    )


async def _exists(pl: PostlineUnderTest, ref: str) -> bool:
    try:
        await pl.services.spool.get(ref)
    except SpoolMissing:
        return False
    return True


async def test_a_body_with_a_queued_job_is_kept(postline: PostlineUnderTest) -> None:
    sent = await postline.send(to="waiting@dest.test")
    report = await _clean(postline)
    assert (report.candidates, report.deleted) == (1, 0)
    assert await _exists(postline, sent["id"])


@pytest.mark.parametrize("retention", [0, 3600])
async def test_a_body_of_a_waiting_email_without_a_job_is_kept(
    postline: PostlineUnderTest, retention: float
) -> None:
    """Also with a body retention, which keeps more (final emails' bodies), never less."""
    sent = await postline.send(to="waiting@dest.test")
    # The job is gone (a Redis restarted empty, an ack lost): the email still waits.
    (job,) = await postline.services.queue.lease("test", 10, 60)
    await postline.services.queue.ack(job)
    assert await postline.services.queue.body_refs() == set()
    report = await _clean(postline, retention=retention)
    assert report.deleted == 0
    assert await _exists(postline, sent["id"])


async def test_a_finished_email_body_is_deleted_only_after_max_age(
    postline: PostlineUnderTest,
) -> None:
    sent = await postline.send(to="done@dest.test")
    postline.start_engine()
    await postline.wait_for_status(sent["id"], ["delivered"])
    await postline.stop_engine()
    young = await _clean(postline, days_ahead=0)
    assert (young.candidates, young.deleted) == (0, 0)
    assert await _exists(postline, sent["id"])
    old = await _clean(postline)
    assert (old.candidates, old.deleted, old.refused) == (1, 1, None)
    assert not await _exists(postline, sent["id"])


async def test_a_stray_body_without_any_row_is_deleted(
    postline: PostlineUnderTest, caplog: pytest.LogCaptureFixture
) -> None:
    # What accept leaves when it dies between the spool write and the commit.
    await postline.services.spool.put("em_stray0000000000000000", b"Subject: lost\r\n\r\nx\r\n")
    sent = await postline.send(to="waiting@dest.test")
    caplog.set_level(logging.INFO, logger="postline.housekeeping")
    report = await _clean(postline)
    assert (report.candidates, report.deleted) == (2, 1)
    said = [r.getMessage() for r in caplog.records if r.name == "postline.housekeeping"]
    assert said == ["orphan cleanup deleted 1 of 2 old bodies"]
    assert not await _exists(postline, "em_stray0000000000000000")
    assert await _exists(postline, sent["id"])


async def test_nothing_is_deleted_when_the_queue_cannot_list_its_bodies(
    postline: PostlineUnderTest, tmp_path: object, caplog: pytest.LogCaptureFixture
) -> None:
    await postline.services.spool.put("em_stray0000000000000000", b"Subject: lost\r\n\r\nx\r\n")
    services = postline.services
    if isinstance(services.queue, RedisQueue):
        broken: Any = RedisQueue("redis://127.0.0.1:1/0", prefix="nothing-listens-here")
    else:
        # A store the queue cannot read: a directory where the database file should be.
        broken = EmbeddedQueue(Database(f"sqlite+aiosqlite:///{tmp_path}"))
    with pytest.raises(QueueError):
        await broken.body_refs()
    now = utcnow() + timedelta(days=10)
    caplog.set_level(logging.WARNING, logger="postline.housekeeping")
    report = await clean_orphans(services.db, broken, services.spool, now, MAX_AGE)
    await broken.close()
    if isinstance(broken, EmbeddedQueue):
        await broken.db.close()
    assert (report.candidates, report.deleted) == (1, 0)
    assert report.refused is not None and "could not list" in report.refused
    # The operator is told why, in the log as in the report.
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == [f"orphan cleanup deleted nothing: {report.refused}"]
    assert await _exists(postline, "em_stray0000000000000000")


async def test_the_copies_of_a_tracked_email_stay_and_go_with_its_body(
    postline: PostlineUnderTest,
) -> None:
    # A tracked email to several: one body per recipient, the first under its own ref.
    sent = await postline.send(
        to=["a@dest.test", "b@dest.test"], cc=["c@other.test"], track={"opens": True}, html="<p>x"
    )
    copies = [copy_ref(sent["id"], position) for position in range(3)]
    # What accept leaves when it dies between writing such copies and the commit.
    stray = [copy_ref("em_stray0000000000000000", position) for position in range(2)]
    for ref in stray:
        await postline.services.spool.put(ref, b"Subject: lost\r\n\r\nx\r\n")
    report = await _clean(postline)
    assert (report.candidates, report.deleted) == (5, 2)
    assert [await _exists(postline, ref) for ref in copies] == [True, True, True]
    assert [await _exists(postline, ref) for ref in stray] == [False, False]

    # Waiting without a job (an ack lost): the email's rows keep every copy.
    for job in await postline.services.queue.lease("test", 10, 60):
        await postline.services.queue.ack(job)
    assert (await _clean(postline)).deleted == 0

    # Finished (cancelled), past max_age: all of them go.
    cancelled = await postline.client.post(
        f"/v1/emails/{sent['id']}/cancel", headers=postline.auth()
    )
    assert cancelled.status_code == 200, cancelled.text
    report = await _clean(postline)
    assert (report.candidates, report.deleted) == (3, 3)
    assert [await _exists(postline, ref) for ref in copies] == [False, False, False]
