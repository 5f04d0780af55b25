"""Named queries for housekeeping's safety nets: what the database says still waits.

Job recovery (``postline.recovery``) rebuilds queue jobs from the recipients
still waiting; orphan cleanup (``postline.orphans``) keeps the bodies of the
emails still waiting. Both ask the same question of the store, with the
"still waiting" sets of ``postline.model``, so they can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from postline.model import PENDING_STATUSES, WAITING_EMAIL_STATUSES, RecipientStatus
from postline.store.records import Record
from postline.store.schema import email_recipients, sent_emails

_WAITING_EMAILS = sorted(str(s) for s in WAITING_EMAIL_STATUSES)
_PENDING_RECIPIENTS = sorted(str(s) for s in PENDING_STATUSES)


@dataclass(frozen=True, slots=True)
class WaitingRecipient(Record):
    """A recipient still waiting for delivery, with what rebuilding its job needs."""

    id: str
    email_id: str
    destination: str
    status: RecipientStatus
    attempts: int
    next_attempt_at: datetime | None
    scheduled_at: datetime | None  # the email's
    body_ref: str  # the email's


async def waiting_recipients(
    conn: AsyncConnection, created_before: datetime
) -> list[WaitingRecipient]:
    """Every recipient still waiting that was created before ``created_before``,
    grouped by email (in recipient order)."""
    r = email_recipients.c
    statement = (
        select(
            r.id,
            r.email_id,
            r.destination,
            r.status,
            r.attempts,
            r.next_attempt_at,
            sent_emails.c.scheduled_at,
            sent_emails.c.body_ref,
        )
        .join(sent_emails, sent_emails.c.id == r.email_id)
        .where(sent_emails.c.status.in_(_WAITING_EMAILS))
        .where(r.status.in_(_PENDING_RECIPIENTS))
        .where(r.created_at < created_before)
        .order_by(r.email_id, r.position)
    )
    return [WaitingRecipient.from_row(row) for row in await conn.execute(statement)]


async def waiting_body_refs(conn: AsyncConnection) -> set[str]:
    """The spool references of every email still waiting: bodies that must stay."""
    statement = select(sent_emails.c.body_ref).where(sent_emails.c.status.in_(_WAITING_EMAILS))
    return {row.body_ref for row in await conn.execute(statement)}
