"""Tell the sender when recipients bounce or expire: one DSN per email and attempt.

The DSN is queued in the same transaction that records the failures, so a
crash can lose neither. It goes out with the null sender through the normal
engine; a DSN about a DSN, or about mail from a null sender, is never sent.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from postline.accept import Acceptor
from postline.delivery.dsn import FailedRecipient, OriginalMessage, build_dsn, needs_dsn
from postline.model import RecipientStatus
from postline.outcomes import Outcome, is_customer_mail
from postline.queue import Job
from postline.spool import Spool, SpoolMissing
from postline.store import domains as domain_store
from postline.store.emails import Email, Recipient
from postline.store.types import utcnow

log = logging.getLogger("postline.bounces")


@dataclass(frozen=True)
class Failure:
    recipient: Recipient
    outcome: Outcome
    mx_host: str | None


def _headers(body: bytes) -> bytes:
    for separator in (b"\r\n\r\n", b"\n\n"):
        head, found, _ = body.partition(separator)
        if found:
            return head + separator[: len(separator) // 2]
    return body


def _status(outcome: Outcome) -> str:
    if outcome.status is RecipientStatus.FAILED:
        return "4.4.7"  # RFC 3463: delivery time expired
    code = outcome.enhanced_code or ""
    return code if code.startswith("5.") else "5.0.0"


class BounceNotifier:
    def __init__(self, acceptor: Acceptor, spool: Spool, hostname: str) -> None:
        self.acceptor = acceptor
        self.spool = spool
        self.hostname = hostname

    async def notify(
        self, conn: AsyncConnection, email: Email, failures: Sequence[Failure], now: datetime
    ) -> list[Job]:
        """Queue a DSN for these failures when the domain wants them; the jobs to enqueue."""
        if not failures or not is_customer_mail(email):
            return []
        domain = await domain_store.get_domain(conn, email.domain_id)
        if domain is None or not domain.bounce_notifications:
            return []
        # The From address, of API and submitted mail alike: both go out with Postline's
        # VERP return path (late bounces come back to Postline), so the envelope sender
        # stored is no mailbox to write to.
        notify_to = email.from_address
        try:
            body = await self.spool.get(email.body_ref)
        except SpoolMissing:
            body = b""
        original = OriginalMessage(
            envelope_from=notify_to,
            headers=_headers(body),
            message_id=email.message_id,
            envelope_id=email.id,
        )
        if not notify_to or not needs_dsn(original):
            return []
        recipients = [
            FailedRecipient(
                address=f.recipient.address,
                action="failed",
                status=_status(f.outcome),
                remote_mta=f.mx_host,
                diagnostic=f.outcome.response or f.outcome.reason,
                last_attempt=now,
            )
            for f in failures
        ]

        # A partial of a module function, not a closure: it is built in the compose pool.
        build = functools.partial(
            _build,
            reporting_mta=self.hostname,
            original=original,
            recipients=recipients,
            notify_to=notify_to,
            arrival=email.created_at,
            now=now,
        )

        jobs = await self.acceptor.stage_notification(
            conn,
            domain=domain,
            notify_to=notify_to,
            build=build,
            now=utcnow(),  # queued for real now, whatever clock judged the expiry
            original_email_id=email.id,
        )
        log.info("dsn queued for email_id=%s recipients=%d", email.id, len(failures))
        return jobs


def _build(message_id: str, **fields: Any) -> bytes:
    """``build_dsn`` with the message id first, as ``Acceptor.stage_notification`` calls it."""
    return build_dsn(message_id=message_id, **fields)
