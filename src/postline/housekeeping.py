"""Periodic chores of a worker: the lease, queue and spool upkeep nothing else does.

Every worker runs them; each chore is safe to run from several processes at
once (leases are freed atomically, restored jobs are de-duplicated by the
queue, retention frees and purges idempotently, orphan cleanup deletes only
what nothing references).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from postline.app import Services
from postline.backoff import Backoff
from postline.orphans import CleanupReport, clean_orphans
from postline.recovery import restore_missing_jobs
from postline.retention import RetentionReport, retention_pass
from postline.store.event_feed import stamp_all
from postline.store.types import utcnow

log = logging.getLogger("postline.housekeeping")


async def housekeeping_pass(services: Services) -> None:
    """One round of the frequent chores: free abandoned leases, restore lost jobs, gauges."""
    recovered = await services.queue.recover_expired()
    if recovered:
        log.warning("freed %d job leases (expired, or of stopped workers)", recovered)
    if not services.queue.shares_store:
        await restore_missing_jobs(
            services.db, services.queue, utcnow(), services.settings.requeue_grace_seconds
        )
    await services.engine.delivery.pool.prune()
    depth = await services.queue.depth()
    services.metrics.queue_depth.set(sum(depth.values()))
    in_flight = await services.queue.in_flight()
    services.metrics.queue_in_flight.set(sum(in_flight.values()))
    # Number new events for the feed and count them for the statistics before
    # retention may purge them, and after the chores that keep mail moving.
    await stamp_all(services.db.write)
    # Last: the chores above keep mail moving and must not wait behind a backlog here.
    await retention_chores(services)
    await tls_report_chores(services)


async def tls_report_chores(services: Services) -> int:
    """Store the TLS sessions counted here, send the reports of finished days."""
    await services.engine.tls_counts.flush()
    if services.tls_reporter is None:
        return 0
    return await services.tls_reporter.send_due()


async def retention_chores(services: Services) -> RetentionReport:
    """Free the bodies of final emails, purge emails past ``POSTLINE_RETENTION_DAYS``."""
    settings = services.settings
    return await retention_pass(
        services.db,
        services.spool,
        utcnow(),
        body_retention_seconds=settings.body_retention_seconds,
        retention_days=settings.retention_days,
    )


async def cleanup_pass(services: Services) -> CleanupReport:
    """Delete spool bodies older than ``POSTLINE_MAX_AGE_SECONDS`` that nothing references."""
    return await clean_orphans(
        services.db,
        services.queue,
        services.spool,
        utcnow(),
        services.settings.max_age_seconds,
        body_retention_seconds=services.settings.body_retention_seconds,
    )


async def housekeeping(services: Services, stop: asyncio.Event) -> None:
    """Chores every ``POSTLINE_HOUSEKEEPING_INTERVAL``, orphan cleanup every
    ``POSTLINE_ORPHAN_CLEANUP_INTERVAL``; back off while storage is away."""
    settings = services.settings
    backoff = Backoff("housekeeping", first=1.0, cap=settings.housekeeping_interval)
    loop = asyncio.get_running_loop()
    next_cleanup = loop.time()
    while not stop.is_set():
        wait = settings.housekeeping_interval
        try:
            await housekeeping_pass(services)
            if loop.time() >= next_cleanup:
                await cleanup_pass(services)
                next_cleanup = loop.time() + settings.orphan_cleanup_interval
            backoff.succeeded()
        except Exception as exc:
            wait = backoff.failed(exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=wait)
