"""A worker on another host than the API delivers new mail at once, not at its next poll.

The API announces every enqueue, on the Redis queue's ``work`` channel or with
PostgreSQL's NOTIFY when the embedded queue lives there, and each worker watches for it
(``Queue.watch_work``). Here the worker polls every ten minutes, far past the test's
deadline: only the announcement can get the mail delivered in time.
"""

from __future__ import annotations

import pytest

from tests.acceptance.test_graceful_shutdown import start_api
from tests.acceptance.test_scale_out import (
    Deployment,
    RedisQueueKeys,
    Rig,
    destinations,
    redis_queue,
    rig,
    send_all,
    wait_all_final,
)

__all__ = ["destinations", "redis_queue", "rig"]  # fixtures, imported for pytest

pytestmark = pytest.mark.postgres

#: Far longer than the deadline below: a worker that waited for its poll would fail.
POLL_INTERVAL = 600
DEADLINE = 60


@pytest.mark.redis
async def test_an_idle_worker_hears_of_mail_queued_in_redis_without_polling(
    postgres_url: str, redis_queue: RedisQueueKeys, rig: Rig
) -> None:
    rig.use_shared_storage(postgres_url, redis_queue.url, redis_queue.prefix)
    await delivered_without_polling(rig)


async def test_an_idle_worker_hears_of_mail_queued_in_postgresql_without_polling(
    postgres_url: str, rig: Rig
) -> None:
    rig.use_shared_storage(postgres_url, "embedded", "postline")  # no Redis: the embedded queue
    await delivered_without_polling(rig)


#: What the scale-out rig shortens (retries, SMTP timeouts, housekeeping, the drain,
#: webhooks) to recover from its faults in seconds: here at the defaults, as users run.
SHORTENED = (
    "POSTLINE_RETRY_SCHEDULE",
    "POSTLINE_SMTP_CONNECT_TIMEOUT",
    "POSTLINE_SMTP_COMMAND_TIMEOUT",
    "POSTLINE_HOUSEKEEPING_INTERVAL",
    "POSTLINE_REQUEUE_GRACE_SECONDS",
    "POSTLINE_SHUTDOWN_TIMEOUT",
    "POSTLINE_WEBHOOK_TIMEOUT",
    "POSTLINE_WEBHOOK_RETRY_SCHEDULE",
)


async def delivered_without_polling(rig: Rig) -> None:
    """``postline api`` and a ``postline worker`` that polls every ten minutes, every
    other setting at its default: two rounds of mail, the second once the worker is
    idle again, each delivered in time."""
    for name in SHORTENED:
        del rig.install.extra[name]
    rig.install.extra["POSTLINE_POLL_INTERVAL"] = str(POLL_INTERVAL)
    api, key = await start_api(rig, "api")
    worker = await rig.launch(rig.install, "worker")
    owner = await worker.worker_ready()
    deployment = Deployment(api, key, workers=[worker], owners=[owner])
    for round_ in range(2):
        sent = await send_all(api, key, [f"user{round_}@alpha.test", f"user{round_}@beta.test"])
        statuses = await wait_all_final(deployment, sent, timeout=DEADLINE)
        assert set(statuses.values()) == {"delivered"}, statuses
    assert rig.destinations.total() == 4
