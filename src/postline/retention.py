"""Retention: bodies leave the spool once their email is final, old emails leave the store.

Housekeeping runs both sweeps every pass (``POSTLINE_HOUSEKEEPING_INTERVAL``),
so a body is gone within one interval of its last recipient becoming final
(or of ``POSTLINE_BODY_RETENTION_SECONDS`` after that), instead of waiting for
orphan cleanup's ``max_age``. Each sweep works in bounded rounds, so a backlog
(the first pass after an upgrade) is worked off over several passes without
holding the store or delaying lease recovery.

Order makes a crash harmless: a body is deleted before its email is marked
freed (a crash between the two only repeats the deletion next pass), and an
email's rows are deleted before a body still kept is (a crash between leaves
an unreferenced body, which orphan cleanup removes).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from postline.spool.base import Spool
from postline.store import inbound as inbound_store
from postline.store import inbound_routes as route_store
from postline.store import retention as retention_store
from postline.store.db import Database

log = logging.getLogger("postline.housekeeping")

#: Emails per statement round.
BATCH = 500
#: Rounds per pass: a pass frees at most this many batches, the rest waits for the next.
BODY_ROUNDS = 50
PURGE_ROUNDS = 20


@dataclass(frozen=True)
class RetentionReport:
    bodies_freed: int
    emails_purged: int


async def free_bodies(
    db: Database,
    spool: Spool,
    now: datetime,
    retention_seconds: float,
    *,
    batch: int = BATCH,
    rounds: int = BODY_ROUNDS,
) -> int:
    """Delete the bodies of emails final for at least ``retention_seconds``; how many."""
    final_before = now - timedelta(seconds=retention_seconds)
    freed = 0
    for _ in range(rounds):
        async with db.read() as conn:
            kept = await retention_store.bodies_to_free(
                conn, final_before=final_before, limit=batch
            )
        if not kept:
            break
        await spool.delete_many([ref for k in kept for ref in k.refs])
        async with db.write() as conn:
            # Two workers may free the same batch at once; only one marks each email.
            freed += await retention_store.mark_bodies_freed(conn, [k.email_id for k in kept], now)
        if len(kept) < batch:
            break
    if freed:
        log.info("freed %d bodies of final emails", freed)
    return freed


async def purge_emails(
    db: Database,
    spool: Spool,
    now: datetime,
    retention_days: float,
    *,
    batch: int = BATCH,
    rounds: int = PURGE_ROUNDS,
) -> int:
    """Delete emails final for more than ``retention_days`` with all their rows; how many.

    An email with an event not yet fanned out to webhooks, or a webhook delivery
    still retried to an enabled endpoint, waits: the receiver is owed that event.
    """
    final_before = now - timedelta(days=retention_days)
    purged = 0
    for _ in range(rounds):
        async with db.write() as conn:
            emails = await retention_store.claim_purgeable(
                conn, final_before=final_before, limit=batch
            )
            await retention_store.delete_emails(conn, [e.email_id for e in emails])
        await spool.delete_many([ref for e in emails if not e.body_freed for ref in e.refs])
        purged += len(emails)
        if len(emails) < batch:
            break
    if purged:
        log.info("purged %d emails final for more than %g days", purged, retention_days)
    return purged


async def retention_pass(
    db: Database,
    spool: Spool,
    now: datetime,
    *,
    body_retention_seconds: float,
    retention_days: float,
) -> RetentionReport:
    """Both sweeps; ``retention_days`` 0 keeps emails for ever."""
    bodies = await free_bodies(db, spool, now, body_retention_seconds)
    emails = await purge_emails(db, spool, now, retention_days) if retention_days > 0 else 0
    if retention_days > 0:
        await purge_unmatched(db, now, retention_days)
    return RetentionReport(bodies, emails)


async def purge_unmatched(db: Database, now: datetime, retention_days: float) -> int:
    """Inbound reports that were never applied (``GET /v1/inbound/reports``), and the mail inbound
    routes took (``GET /v1/inbound``), live as long as emails: kept
    ``retention_days`` after they arrived, then deleted."""
    cutoff = now - timedelta(days=retention_days)
    async with db.write() as conn:
        purged = await inbound_store.delete_unmatched_before(conn, cutoff)
        routed = await route_store.delete_messages_before(conn, cutoff)
    if routed:
        log.info("purged %d routed inbound messages older than %g days", routed, retention_days)
    if purged:
        log.info("purged %d unmatched inbound reports older than %g days", purged, retention_days)
    return purged
