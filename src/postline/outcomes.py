"""The one place where a recipient changes status.

Every move — a delivery outcome, a cancellation, a suppression at accept —
goes through :func:`apply_outcome` inside the caller's transaction: it checks
the state machine, writes the recipient, its timeline row (only when the move
was allowed) and its outbox event (none for mail Postline writes itself, see
:func:`is_customer_mail`), so the three can never disagree.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncConnection

from postline.addresses import quoted_from
from postline.ids import new_id
from postline.model import (
    EVENT_FOR_STATUS,
    FINAL_STATUSES,
    OWN_SOURCES,
    AttemptScope,
    BounceType,
    EmailSource,
    EmailStatus,
    EventType,
    RecipientStatus,
    TlsInfo,
    allowed_sources,
    can_transition,
    derive_email_status,
)
from postline.store import emails as email_store
from postline.store import suppressions as suppression_store
from postline.store.emails import Email, Recipient


@dataclass(frozen=True)
class Outcome:
    """What happened to one recipient, as the recorder stores it."""

    status: RecipientStatus
    smtp_code: int | None = None
    enhanced_code: str | None = None
    response: str | None = None
    bounce_type: BounceType | None = None
    reason: str | None = None
    bounce_rule: str | None = None  # the classification rule that decided bounce_type
    domain_level: bool = False  # a hard verdict about the whole domain: suppress for a while


@dataclass
class OutcomeRows:
    """Timeline and outbox rows of moves, inserted together by :meth:`flush`.

    A recorder batch collects every attempt's rows here and inserts them in two
    statements, instead of two per recipient: on SQLite each statement is a
    round trip to the database thread while every other writer waits.
    """

    attempts: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    async def flush(self, conn: AsyncConnection) -> None:
        await email_store.insert_attempts(conn, self.attempts)
        await email_store.insert_events(conn, self.events)
        self.attempts.clear()
        self.events.clear()


@dataclass(frozen=True)
class AttemptInfo:
    """The SMTP transaction an outcome came from; None for moves that are not attempts."""

    attempt_id: str
    attempt: int
    mx_host: str | None
    duration_ms: int
    scope: AttemptScope
    next_attempt_at: datetime | None = None
    #: False for a timeline row that is no attempt: a wait behind an open breaker
    #: is shown, but the recipient's ``attempts`` stays as it was.
    counted: bool = True
    #: The TLS of the connection, or the policy that deferred without one.
    tls: TlsInfo | None = None


class Sourced(Protocol):
    """An email, as stored or as submitted: anything that knows where it came from."""

    @property
    def source(self) -> EmailSource: ...


def is_customer_mail(email: Sourced) -> bool:
    """False for mail Postline writes itself (a DSN): no ``email.*`` event is ever
    written about it, so no webhook tells the customer about mail they never
    sent, and it neither suppresses an address nor gets a DSN of its own.
    """
    return email.source not in OWN_SOURCES


def recipient_bounce_type(outcome: Outcome) -> str | None:
    """The ``bounce_type`` a recipient (and its event) carries: a bounce's class only.

    A deferral or an expiry is classified too, but saying ``"soft"`` of a recipient
    that never bounced would read as a bounce: that class is kept in the attempt's
    timeline row, and an ``email.deferred`` event names it ``deferral_type``.
    """
    if outcome.status is RecipientStatus.BOUNCED and outcome.bounce_type is not None:
        return str(outcome.bounce_type)
    return None


def deferral_type(outcome: Outcome) -> str | None:
    """The class of a deferral's temporary failure (``soft``, ``block``...); None otherwise."""
    if outcome.status is RecipientStatus.DEFERRED and outcome.bounce_type is not None:
        return str(outcome.bounce_type)
    return None


#: Resend's ``bounce.type`` (Amazon SES's names) for each Postline bounce class: only an
#: address that does not exist is a permanent bounce, as only it is suppressed.
RESEND_BOUNCE_TYPE = {
    BounceType.HARD: "Permanent",
    BounceType.SOFT: "Transient",
    BounceType.BLOCK: "Transient",
    BounceType.UNDETERMINED: "Undetermined",
}


def resend_bounce(outcome: Outcome) -> dict[str, str | None]:
    """The ``bounce`` member of an ``email.bounced`` payload, shaped as Resend's, so a
    receiver written for Resend reads Postline's bounces unchanged."""
    kind = outcome.bounce_type
    return {
        "message": outcome.reason or outcome.response,
        "type": RESEND_BOUNCE_TYPE[kind] if kind is not None else "Undetermined",
        "subType": recipient_bounce_type(outcome),
    }


def _timestamp(moment: datetime, timespec: str = "auto") -> str:
    return moment.isoformat(timespec=timespec).replace("+00:00", "Z")


def event_row(
    *,
    email: Email,
    recipient: Recipient,
    event_type: EventType,
    outcome: Outcome,
    attempt: int,
    sequence: int,
    now: datetime,
) -> dict[str, Any]:
    """The outbox row for one recipient outcome; its payload is the webhook body of
    docs/API.md ("The request").

    ``data`` holds Postline's members and, beside them, Resend's (``to``, ``subject``,
    ``created_at``, ``bounce``), all from the email and the outcome the caller already
    holds: recording an outcome never reads anything more to build its event.
    """
    data = {
        **email_data(email, recipient.address),
        "status": str(outcome.status),
        "smtp_code": outcome.smtp_code,
        "enhanced_code": outcome.enhanced_code,
        "reason": outcome.reason or outcome.response,
        "bounce_type": recipient_bounce_type(outcome),
        "deferral_type": deferral_type(outcome),
        "attempt": attempt,
        "tags": dict(email.tags or {}),
        "sequence": sequence,
    }
    if event_type is EventType.BOUNCED:
        data["bounce"] = resend_bounce(outcome)
    return outbox_row(email, recipient.id, event_type, data, sequence, now)


def email_data(email: Email, address: str | None) -> dict[str, Any]:
    """The members every event about one recipient of ``email`` starts with."""
    return {
        "email_id": email.id,
        "message_id": email.message_id,
        "domain": email.from_address.rpartition("@")[2],
        "from": quoted_from(email.from_header, email.from_address),
        "to": [address] if address else [],
        "subject": email.subject,
        # As the API gives the email's created_at, so a receiver can match the two.
        "created_at": _timestamp(email.created_at, "milliseconds"),
        "recipient": address,
    }


def outbox_row(
    email: Email,
    recipient_id: str | None,
    event_type: EventType,
    data: dict[str, Any],
    sequence: int,
    now: datetime,
) -> dict[str, Any]:
    """The ``events`` row (the outbox) for an event whose payload ``data`` is built."""
    return {
        "id": new_id("evt_"),
        "type": str(event_type),
        "email_id": email.id,
        "recipient_id": recipient_id,
        "domain_id": email.domain_id,
        "sequence": sequence,
        "created_at": now,
        "payload": {
            "type": str(event_type),
            "created_at": _timestamp(now),
            "data": data,
        },
    }


#: How long a domain-level hard bounce (5.1.2, NXDOMAIN, null MX) suppresses: a
#: verdict that may come from a resolver, ours or theirs, is never for ever.
DOMAIN_SUPPRESSION = timedelta(hours=24)


def suppression_reason(outcome: Outcome) -> str | None:
    """A hard bounce or a complaint suppresses; nothing else does.

    ``bounce_type: hard`` is given only to an address that does not exist
    (delivery/classify.py), so the webhook's bounce type and the suppression
    list never disagree. Blocks, full mailboxes and other soft failures say
    nothing about the address itself: suppressing them would lose valid recipients.
    """
    if outcome.status is RecipientStatus.COMPLAINED:
        return "complaint"
    if outcome.status is RecipientStatus.BOUNCED and outcome.bounce_type is BounceType.HARD:
        return "hard_bounce"
    return None


def suppression_expiry(outcome: Outcome, now: datetime) -> datetime | None:
    """When the suppression ``outcome`` causes ends: None (never) unless it is about a domain."""
    return now + DOMAIN_SUPPRESSION if outcome.domain_level else None


@dataclass(frozen=True)
class Move:
    """A recipient's move the state machine allows, decided but not yet written.

    Deciding and writing are apart so that a caller moving many recipients (the
    recorder's batch) writes all their moves in one statement, then records the
    ones that moved.
    """

    email: Email
    recipient: Recipient
    outcome: Outcome
    attempt: AttemptInfo | None
    #: The recipient's ``attempts`` after the move.
    attempts: int
    row: email_store.RecipientMove


def plan_move(
    *,
    email: Email,
    recipient: Recipient,
    outcome: Outcome,
    now: datetime,
    attempt: AttemptInfo | None = None,
) -> Move | None:
    """The move of ``recipient`` to ``outcome``, or None if the state machine refuses it."""
    current = recipient.status
    if not can_transition(current, outcome.status):
        return None
    if attempt is not None and current in FINAL_STATUSES:
        # delivered -> bounced is for an asynchronous DSN, never for a late SMTP
        # attempt of a stale worker: an attempt only ever moves a pending recipient.
        return None
    attempts = recipient.attempts + (1 if attempt is not None and attempt.counted else 0)
    values: dict[str, Any] = {"updated_at": now, "attempts": attempts}
    # A bounce out of a final status is a late report (postline.inbound): the recipient
    # shows the report's reply and class instead of the 250 it had.
    late_bounce = current in FINAL_STATUSES and outcome.status is RecipientStatus.BOUNCED
    if attempt is not None or late_bounce:
        values |= {
            "smtp_code": outcome.smtp_code,
            "enhanced_code": outcome.enhanced_code,
            "response": outcome.response,
            "bounce_type": recipient_bounce_type(outcome),
            "bounce_rule": outcome.bounce_rule,
            "next_attempt_at": attempt.next_attempt_at if attempt is not None else None,
        }
    row = email_store.RecipientMove(
        recipient.id, outcome.status, tuple(sorted(allowed_sources(outcome.status))), values
    )
    return Move(email, recipient, outcome, attempt, attempts, row)


async def record_move(
    conn: AsyncConnection,
    move: Move,
    now: datetime,
    rows: OutcomeRows,
    sequence: int | None = None,
) -> None:
    """What a move that was written brings with it: its timeline row, its suppression
    and its event (``sequence``: the event's place among the email's, else read)."""
    email, recipient, outcome, attempt = move.email, move.recipient, move.outcome, move.attempt
    if attempt is not None:
        rows.attempts.append(
            {
                "email_id": email.id,
                "recipient_id": recipient.id,
                "attempt_id": attempt.attempt_id,
                "destination": recipient.destination,
                "attempt": attempt.attempt,
                "status": str(outcome.status),
                "scope": str(attempt.scope),
                "mx_host": attempt.mx_host,
                "smtp_code": outcome.smtp_code,
                "enhanced_code": outcome.enhanced_code,
                "response": outcome.response,
                "bounce_type": str(outcome.bounce_type) if outcome.bounce_type else None,
                "bounce_rule": outcome.bounce_rule,
                "duration_ms": attempt.duration_ms,
                **email_store.tls_columns(attempt.tls),
                "created_at": now,
            }
        )
    reason = suppression_reason(outcome)
    # A bounced DSN says the original sender is unreachable; it is not a reason to
    # stop the domain mailing that address (and DSNs are never suppressed at all).
    customer_mail = is_customer_mail(email)
    if reason is not None and customer_mail:
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
            expires_at=suppression_expiry(outcome, now),
        )
    if customer_mail:
        if sequence is None:
            sequence = await email_store.next_event_sequence(conn, email.id)
        rows.events.append(
            event_row(
                email=email,
                recipient=recipient,
                event_type=EVENT_FOR_STATUS[outcome.status],
                outcome=outcome,
                attempt=move.attempts,
                sequence=sequence,
                now=now,
            )
        )


async def apply_outcome(
    conn: AsyncConnection,
    *,
    email: Email,
    recipient: Recipient,
    outcome: Outcome,
    now: datetime,
    attempt: AttemptInfo | None = None,
) -> bool:
    """Move a recipient if the state machine allows it; False (and nothing written) if not."""
    move = plan_move(email=email, recipient=recipient, outcome=outcome, now=now, attempt=attempt)
    if move is None:
        return False
    if not await email_store.move_recipients(conn, [move.row]):
        return False  # someone else moved it first, inside their own transaction
    rows = OutcomeRows()
    await record_move(conn, move, now, rows)
    await rows.flush(conn)
    return True


async def refresh_email_status(conn: AsyncConnection, email: Email, now: datetime) -> EmailStatus:
    """Derive the email's status from its recipients and store it if it changed."""
    recipients = await email_store.get_recipients(conn, email.id)
    (status,) = await store_email_statuses(conn, [(email, [r.status for r in recipients])], now)
    return status


async def store_email_statuses(
    conn: AsyncConnection,
    emails: Iterable[tuple[Email, Iterable[RecipientStatus]]],
    now: datetime,
) -> list[EmailStatus]:
    """Store each email's status derived from its recipients' ``statuses``, where it
    changed; return the derived statuses, in order.

    One statement per new status, not per email: a batch of deliveries mostly
    moves its emails to the same few statuses.
    """
    derived: list[EmailStatus] = []
    changed: dict[EmailStatus, list[str]] = defaultdict(list)
    for email, statuses in emails:
        status = derive_email_status(statuses)
        derived.append(status)
        if status != email.status:
            changed[status].append(email.id)
    for status, email_ids in changed.items():
        await email_store.set_emails_status(conn, email_ids, status, now)
    return derived


async def activate_scheduled(
    conn: AsyncConnection, due: Mapping[str, Sequence[str]], now: datetime
) -> None:
    """Scheduled emails whose time has come: these recipients join the queue (no new event).

    ``due`` maps an email id to its recipient ids. Many emails at once, in a
    handful of statements, as deliveries starting together share one transaction.
    """
    emails = await email_store.lock_emails(conn, due)
    recipient_ids = [recipient_id for ids in due.values() for recipient_id in ids]
    await email_store.set_recipients_status(
        conn,
        recipient_ids,
        RecipientStatus.QUEUED,
        [RecipientStatus.SCHEDULED],
        {"updated_at": now},
    )
    statuses: dict[str, list[RecipientStatus]] = defaultdict(list)
    for recipient in await email_store.recipients_of(conn, due):
        statuses[recipient.email_id].append(recipient.status)
    await store_email_statuses(conn, [(email, statuses[email.id]) for email in emails], now)
