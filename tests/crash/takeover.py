"""How long a killed process's mail waits: from the SIGKILL to its first redelivery.

At the kill, the jobs the queue shows leased are the ones the dead process held
(it was the only engine leasing, or the test knows its owner). The first of
their emails that any MX receives after the kill is the moment the takeover
(heartbeat timeout, then a sweep by a live worker) let the mail flow again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

import redis.asyncio as aioredis
from sqlalchemy import select

from postline.config import normalize_database_url
from postline.store.db import Database
from postline.store.schema import queue_jobs
from tests.harness.fake_mx import FakeMX

#: The envelope sender Postline uses: the email id is in it (VERP).
_BOUNCE_ADDRESS = re.compile(r"^bounces\+([^@]+)@")


async def leased_email_ids(
    database_url: str, queue_url: str, queue_prefix: str, owner: str | None = None
) -> set[str]:
    """The emails of the jobs leased right now (by ``owner`` only, if given)."""
    if queue_url == "embedded":
        db = Database(normalize_database_url(database_url))
        try:
            async with db.read() as conn:
                rows = await conn.execute(
                    select(queue_jobs.c.email_id, queue_jobs.c.lease_owner).where(
                        queue_jobs.c.lease_owner.is_not(None)
                    )
                )
                leased = [(row.email_id, row.lease_owner) for row in rows]
        finally:
            await db.close()
    else:
        client = aioredis.Redis.from_url(queue_url, decode_responses=True)
        try:
            jobs = [
                json.loads(raw) for raw in (await client.hgetall(f"{queue_prefix}:jobs")).values()
            ]
        finally:
            await client.aclose()
        leased = [(job["email_id"], job["lease_owner"]) for job in jobs if job.get("lease_owner")]
    return {email_id for email_id, holder in leased if owner is None or holder == owner}


def first_redelivery(
    servers: Iterable[FakeMX], email_ids: set[str], killed_at: float
) -> float | None:
    """Seconds from ``killed_at`` (loop time) to the first message of ``email_ids`` that an
    MX received after it; None if none was (they bounced, or the MX had them already)."""
    arrivals = [
        received.at
        for mx in servers
        for received in mx.received
        if received.at > killed_at
        and (match := _BOUNCE_ADDRESS.match(received.mail_from)) is not None
        and match.group(1) in email_ids
    ]
    return min(arrivals) - killed_at if arrivals else None
