"""Named statements of the two retention sweeps: bodies of final emails, and old emails.

A body is needed only while a recipient of its email may still be attempted
(each email has its own body, DSNs included, or one per recipient when tracked,
and the engine reads a body only for pending recipients), so once every
recipient is final it may go, all of its copies together. Rows are
history: they stay ``POSTLINE_RETENTION_DAYS`` and are then purged whole,
except while a webhook still has to tell someone about them.

Every statement is bounded by a ``limit`` and safe to run from several
processes at once: freeing is idempotent, and a purge round locks the emails
it takes (``SKIP LOCKED`` on PostgreSQL; SQLite has one writer at a time).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, delete, exists, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from postline.model import FINAL_EMAIL_STATUSES, PENDING_STATUSES
from postline.spool.base import copy_refs
from postline.store.schema import (
    delivery_attempts,
    email_recipients,
    events,
    sent_emails,
    webhook_attempts,
    webhook_deliveries,
    webhooks,
)

_FINAL_EMAIL_STATUSES = sorted(str(s) for s in FINAL_EMAIL_STATUSES)

# The email's own status says final; its recipients are asked too, so that a status
# stored wrongly can never cost a body that a waiting recipient still needs.
_RECIPIENT_PENDING = exists().where(
    email_recipients.c.email_id == sent_emails.c.id,
    email_recipients.c.status.in_([str(s) for s in PENDING_STATUSES]),
)
# An event the dispatcher has not fanned out yet: purging it would drop its webhooks.
_EVENT_UNDISPATCHED = exists().where(
    events.c.email_id == sent_emails.c.id,
    events.c.dispatched_at.is_(None),
)
# A webhook delivery still being retried to an enabled endpoint. One waiting for a
# disabled endpoint does not hold the purge: it would hold it for ever.
_WEBHOOK_PENDING = exists().where(
    events.c.email_id == sent_emails.c.id,
    webhook_deliveries.c.event_id == events.c.id,
    webhook_deliveries.c.status == "pending",
    webhooks.c.id == webhook_deliveries.c.webhook_id,
    webhooks.c.enabled.is_(True),
)


@dataclass(frozen=True)
class KeptBody:
    """A final email whose body is still in the spool."""

    email_id: str
    body_ref: str
    bodies: int  # how many copies (``spool.base.copy_refs``)

    @property
    def refs(self) -> list[str]:
        return copy_refs(self.body_ref, self.bodies)


@dataclass(frozen=True)
class PurgedEmail:
    email_id: str
    body_ref: str
    body_freed: bool  # False: its body may still be in the spool
    bodies: int

    @property
    def refs(self) -> list[str]:
        return copy_refs(self.body_ref, self.bodies)


def _bodies_to_free(final_before: datetime, limit: int) -> Select[tuple[str, str, int]]:
    return (
        select(sent_emails.c.id, sent_emails.c.body_ref, sent_emails.c.bodies)
        .where(
            sent_emails.c.body_purged_at.is_(None),
            sent_emails.c.status.in_(_FINAL_EMAIL_STATUSES),
            sent_emails.c.updated_at <= final_before,
            ~_RECIPIENT_PENDING,
        )
        .limit(limit)
    )


async def bodies_to_free(
    conn: AsyncConnection, *, final_before: datetime, limit: int
) -> list[KeptBody]:
    """Up to ``limit`` emails final since ``final_before`` or earlier whose body is kept."""
    rows = await conn.execute(_bodies_to_free(final_before, limit))
    return [KeptBody(row.id, row.body_ref, row.bodies) for row in rows]


async def mark_bodies_freed(conn: AsyncConnection, email_ids: Sequence[str], now: datetime) -> int:
    """Record that these emails' bodies left the spool; ``updated_at`` is left alone,
    since it is when the email became final, which the purge counts from."""
    if not email_ids:
        return 0
    result = await conn.execute(
        update(sent_emails)
        .where(sent_emails.c.id.in_(list(email_ids)), sent_emails.c.body_purged_at.is_(None))
        .values(body_purged_at=now)
    )
    return int(result.rowcount or 0)


async def bodies_kept_since(conn: AsyncConnection, final_after: datetime) -> set[str]:
    """Body refs of final emails still inside the body retention: not orphans yet."""
    rows = await conn.execute(
        select(sent_emails.c.body_ref).where(
            sent_emails.c.body_purged_at.is_(None),
            sent_emails.c.status.in_(_FINAL_EMAIL_STATUSES),
            sent_emails.c.updated_at > final_after,
        )
    )
    return {row.body_ref for row in rows}


async def claim_purgeable(
    conn: AsyncConnection, *, final_before: datetime, limit: int
) -> list[PurgedEmail]:
    """Up to ``limit`` emails final before ``final_before`` with no webhook left to send,
    locked for this transaction (PostgreSQL skips those another purge holds)."""
    statement = (
        select(
            sent_emails.c.id,
            sent_emails.c.body_ref,
            sent_emails.c.body_purged_at,
            sent_emails.c.bodies,
        )
        .where(
            sent_emails.c.status.in_(_FINAL_EMAIL_STATUSES),
            sent_emails.c.updated_at < final_before,
            ~_RECIPIENT_PENDING,
            ~_EVENT_UNDISPATCHED,
            ~_WEBHOOK_PENDING,
        )
        .limit(limit)
    )
    if conn.dialect.name != "sqlite":
        statement = statement.with_for_update(skip_locked=True, of=sent_emails)
    rows = await conn.execute(statement)
    return [
        PurgedEmail(row.id, row.body_ref, row.body_purged_at is not None, row.bodies)
        for row in rows
    ]


async def delete_emails(conn: AsyncConnection, email_ids: Sequence[str]) -> None:
    """Delete these emails with everything recorded about them, children first, so the
    result does not depend on the foreign keys' ON DELETE CASCADE being enforced."""
    if not email_ids:
        return
    ids = list(email_ids)
    email_events = select(events.c.id).where(events.c.email_id.in_(ids))
    deliveries = select(webhook_deliveries.c.id).where(
        webhook_deliveries.c.event_id.in_(email_events)
    )
    await conn.execute(
        delete(webhook_attempts).where(webhook_attempts.c.delivery_id.in_(deliveries))
    )
    await conn.execute(
        delete(webhook_deliveries).where(webhook_deliveries.c.event_id.in_(email_events))
    )
    await conn.execute(delete(events).where(events.c.email_id.in_(ids)))
    await conn.execute(delete(delivery_attempts).where(delivery_attempts.c.email_id.in_(ids)))
    await conn.execute(delete(email_recipients).where(email_recipients.c.email_id.in_(ids)))
    await conn.execute(delete(sent_emails).where(sent_emails.c.id.in_(ids)))
