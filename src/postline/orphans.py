"""Orphan spool cleanup: remove bodies nothing will ever read again.

A body becomes an orphan when accept crashed between the spool write and the
commit, or when its email is long finished. Deleting one that is still needed
would lose mail, so the rule is strict: only bodies older than
``max_age``, referenced by no queue job and by no email still waiting for
delivery; and when the queue cannot list its references completely, nothing
is deleted at all. A recipient's own copy of a tracked email's body
(``spool.base.copy_ref``) is judged by its email's ref: kept while that is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from postline.queue.base import Queue, QueueError
from postline.spool.base import Spool, owner_ref
from postline.store import retention as retention_store
from postline.store.db import Database
from postline.store.recovery import waiting_body_refs

log = logging.getLogger("postline.housekeeping")


@dataclass(frozen=True)
class CleanupReport:
    candidates: int  # bodies older than max_age
    deleted: int
    refused: str | None = None  # why nothing was deleted, when it was not safe


async def clean_orphans(
    db: Database,
    queue: Queue,
    spool: Spool,
    now: datetime,
    max_age_seconds: float,
    *,
    body_retention_seconds: float = 0,
) -> CleanupReport:
    candidates = set(await spool.refs_older_than(now - timedelta(seconds=max_age_seconds)))
    if not candidates:
        return CleanupReport(0, 0)
    try:
        queued = await queue.body_refs()
    except QueueError as exc:
        reason = f"the queue could not list its body references ({exc})"
        log.warning("orphan cleanup deleted nothing: %s", reason)
        return CleanupReport(len(candidates), 0, reason)
    async with db.read() as conn:
        waiting = await waiting_body_refs(conn)
        if body_retention_seconds > 0:
            # Kept on purpose for support (POSTLINE_BODY_RETENTION_SECONDS), even past max_age.
            final_after = now - timedelta(seconds=body_retention_seconds)
            waiting |= await retention_store.bodies_kept_since(conn, final_after)
    needed = queued | waiting
    orphans = {ref for ref in candidates if ref not in needed and owner_ref(ref) not in needed}
    for ref in sorted(orphans):
        await spool.delete(ref)
    if orphans:
        log.info("orphan cleanup deleted %d of %d old bodies", len(orphans), len(candidates))
    return CleanupReport(len(candidates), len(orphans))
