"""The embedded queue on PostgreSQL announces new jobs with NOTIFY, at the commit that
queues them and only when it queued some; ``EmbeddedQueue.watch_work`` listens."""

from __future__ import annotations

import asyncpg
import pytest

from postline.config import normalize_database_url
from postline.queue.embedded import WORK_CHANNEL
from tests.harness.polling import poll
from tests.harness.stores import embedded_queue
from tests.integration.test_queue_contract import job

pytestmark = pytest.mark.postgres


async def test_an_enqueue_that_adds_jobs_notifies_when_it_commits(postgres_url: str) -> None:
    payloads: list[str] = []

    def heard(_conn: object, _pid: int, _channel: str, payload: str) -> None:
        payloads.append(payload)

    async with embedded_queue(normalize_database_url(postgres_url)) as queue:
        listener = await asyncpg.connect(postgres_url, timeout=5)
        try:
            await listener.add_listener(WORK_CHANNEL, heard)

            async def mark(payload: str) -> None:
                """A notification of the test's own, in order with the queue's."""
                await listener.execute("SELECT pg_notify($1, $2)", WORK_CHANNEL, payload)

            queued = job()
            await queue.enqueue([])
            await queue.enqueue([queued])
            await queue.enqueue([queued])  # queued already: nothing added
            async with queue.db.write() as conn:
                await queue.enqueue([job()], conn)
                await mark("before the commit")
            await mark("end")

            async def ended() -> bool:
                return bool(payloads) and payloads[-1] == "end"

            await poll(ended, timeout=10, what="the notifications up to the test's last")
        finally:
            await listener.close()
    assert payloads == ["", "before the commit", "", "end"]
