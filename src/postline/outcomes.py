"""The one place where a recipient changes status.

Every move — a delivery outcome, a cancellation, a suppression at accept —
goes through :func:`apply_outcome` inside the caller's transaction: it checks
the state machine, writes the recipient, its timeline row (only when the move
was allowed) and its outbox event, so the three can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from postline.ids import new_id
from postline.model import (
    EVENT_FOR_STATUS,
    FINAL_STATUSES,
    BounceType,
    EventType,
    RecipientStatus,
    allowed_sources,
    can_transition,
    derive_email_status,
)
from postline.store import emails as email_store
from postline.store import suppressions as suppression_store


@dataclass(frozen=True)
class Outcome:
    """What happened to one recipient, as the recorder stores it."""

    status: RecipientStatus
    smtp_code: int | None = None
    enhanced_code: str | None = None
    response: str | None = None
    bounce_type: BounceType | None = None
    reason: str | None = None


@dataclass(frozen=True)
class AttemptInfo:
    """The SMTP transaction an outcome came from; None for moves that are not attempts."""

    attempt_id: str
    attempt: int
    mx_host: str | None
    duration_ms: int
    scope: str  # "transaction" | "recipient"
    next_attempt_at: datetime | None = None


def event_row(
    *,
    email: Any,
    recipient: Any,
    event_type: EventType,
    outcome: Outcome,
    attempt: int,
    sequence: int,
    now: datetime,
) -> dict[str, Any]:
    """The outbox row for one recipient outcome, payload as DESIGN.md "Events"."""
    event_id = new_id("evt_")
    return {
        "id": event_id,
        "type": str(event_type),
        "email_id": email.id,
        "recipient_id": recipient.id,
        "domain_id": email.domain_id,
        "sequence": sequence,
        "created_at": now,
        "payload": {
            "type": str(event_type),
            "created_at": now.isoformat().replace("+00:00", "Z"),
            "data": {
                "email_id": email.id,
                "message_id": email.message_id,
                "domain": email.from_address.rpartition("@")[2],
                "from": email.from_header,
                "recipient": recipient.address,
                "status": str(outcome.status),
                "smtp_code": outcome.smtp_code,
                "enhanced_code": outcome.enhanced_code,
                "reason": outcome.reason or outcome.response,
                "bounce_type": str(outcome.bounce_type) if outcome.bounce_type else None,
                "attempt": attempt,
                "tags": dict(email.tags or {}),
                "sequence": sequence,
            },
        },
    }


def suppression_reason(outcome: Outcome) -> str | None:
    """Only a recipient-invalid hard bounce (5.1.x, 5.2.1) or a complaint suppresses.

    Blocks (5.7.x), full mailboxes and other soft failures say nothing about
    the address itself, so suppressing them would lose valid recipients.
    """
    if outcome.status is RecipientStatus.COMPLAINED:
        return "complaint"
    if outcome.status is not RecipientStatus.BOUNCED or outcome.bounce_type is not BounceType.HARD:
        return None
    code = outcome.enhanced_code or ""
    return "hard_bounce" if code.startswith("5.1.") or code == "5.2.1" else None


async def apply_outcome(
    conn: AsyncConnection,
    *,
    email: Row[Any],
    recipient: Row[Any],
    outcome: Outcome,
    now: datetime,
    attempt: AttemptInfo | None = None,
) -> bool:
    """Move a recipient if the state machine allows it; False (and nothing written) if not."""
    current = RecipientStatus(recipient.status)
    if not can_transition(current, outcome.status):
        return False
    if attempt is not None and current in FINAL_STATUSES:
        # delivered -> bounced is for an asynchronous DSN, never for a late SMTP
        # attempt of a stale worker: an attempt only ever moves a pending recipient.
        return False
    attempts = recipient.attempts + (1 if attempt else 0)
    values: dict[str, Any] = {"updated_at": now, "attempts": attempts}
    if attempt is not None:
        values |= {
            "smtp_code": outcome.smtp_code,
            "enhanced_code": outcome.enhanced_code,
            "response": outcome.response,
            "bounce_type": str(outcome.bounce_type) if outcome.bounce_type else None,
            "next_attempt_at": attempt.next_attempt_at,
        }
    moved = await email_store.set_recipient_status(
        conn, recipient.id, outcome.status, allowed_sources(outcome.status), values
    )
    if not moved:  # someone else moved it first, inside their own transaction
        return False
    if attempt is not None:
        await email_store.insert_attempt(
            conn,
            {
                "email_id": email.id,
                "recipient_id": recipient.id,
                "attempt_id": attempt.attempt_id,
                "destination": recipient.destination,
                "attempt": attempt.attempt,
                "status": str(outcome.status),
                "scope": attempt.scope,
                "mx_host": attempt.mx_host,
                "smtp_code": outcome.smtp_code,
                "enhanced_code": outcome.enhanced_code,
                "response": outcome.response,
                "duration_ms": attempt.duration_ms,
                "created_at": now,
            },
        )
    reason = suppression_reason(outcome)
    # A bounced DSN says the original sender is unreachable; it is not a reason to
    # stop the domain mailing that address (and DSNs are never suppressed at all).
    if reason is not None and email.source != "dsn":
        # Same transaction as the bounce and its event: never a fire-and-forget task.
        await suppression_store.add_suppression(
            conn,
            suppression_id=new_id("sup_"),
            domain_id=email.domain_id,
            address=recipient.address,
            reason=reason,
            now=now,
            source_email_id=email.id,
            detail=outcome.response,
        )
    sequence = await email_store.next_event_sequence(conn, email.id)
    await email_store.insert_events(
        conn,
        [
            event_row(
                email=email,
                recipient=recipient,
                event_type=EVENT_FOR_STATUS[outcome.status],
                outcome=outcome,
                attempt=attempts,
                sequence=sequence,
                now=now,
            )
        ],
    )
    return True


async def refresh_email_status(conn: AsyncConnection, email: Row[Any], now: datetime) -> str:
    """Derive the email's status from its recipients and store it if it changed."""
    recipients = await email_store.get_recipients(conn, email.id)
    status = str(derive_email_status(RecipientStatus(r.status) for r in recipients))
    if status != email.status:
        await email_store.set_email_status(conn, email.id, status, now)
    return status


async def activate_scheduled(
    conn: AsyncConnection, email: Row[Any], recipient_ids: list[str], now: datetime
) -> None:
    """A scheduled email's time has come: its recipients join the queue (no new event)."""
    for recipient_id in recipient_ids:
        await email_store.set_recipient_status(
            conn,
            recipient_id,
            RecipientStatus.QUEUED,
            [RecipientStatus.SCHEDULED],
            {"updated_at": now},
        )
    await refresh_email_status(conn, email, now)
