"""Named queries for emails, their recipients, attempts and events."""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import TextualSelect, and_, bindparam, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from postline.model import (
    OWN_SOURCES,
    AttemptScope,
    BounceType,
    EmailSource,
    EmailStatus,
    EventType,
    RecipientStatus,
    TlsInfo,
    TlsPolicySource,
)
from postline.spool.base import copy_ref, copy_refs
from postline.store.inserts import insert_in_parts
from postline.store.records import Record
from postline.store.schema import (
    delivery_attempts,
    email_recipients,
    events,
    sent_emails,
    suppressions,
)


@dataclass(frozen=True, slots=True)
class Email(Record):
    """One ``sent_emails`` row: an email as accepted, with its derived status."""

    id: str
    domain_id: str
    source: EmailSource
    message_id: str
    from_header: str
    from_address: str
    envelope_from: str
    subject: str
    size: int
    body_ref: str
    tags: dict[str, str]
    status: EmailStatus
    scheduled_at: datetime | None
    created_at: datetime
    updated_at: datetime
    #: Mail Postline wrote about another email (a DSN): that email's id.
    original_email_id: str | None
    #: When housekeeping removed the body from the spool; None while it is kept.
    body_purged_at: datetime | None
    #: Bodies in the spool: 1, one for all recipients; n > 1, one per recipient position
    #: (a tracked email to several, whose tokens name each one: ``copy_ref``).
    bodies: int

    def body_ref_of(self, position: int) -> str:
        """The spool reference of the body sent to the recipient at ``position``."""
        return copy_ref(self.body_ref, position) if self.bodies > 1 else self.body_ref

    @property
    def body_refs(self) -> list[str]:
        """Every spool reference of its bodies: all are kept, freed and purged together."""
        return copy_refs(self.body_ref, self.bodies)

    @property
    def due_at(self) -> datetime:
        """When it could first be sent: its ``scheduled_at``, else its acceptance."""
        return self.scheduled_at or self.created_at


@dataclass(frozen=True, slots=True)
class Recipient(Record):
    """One ``email_recipients`` row: where one address of one email stands."""

    id: str
    email_id: str
    position: int
    address: str
    destination: str
    kind: str  # "to" | "cc" | "bcc"
    status: RecipientStatus
    smtp_code: int | None
    enhanced_code: str | None
    response: str | None
    bounce_type: BounceType | None
    bounce_rule: str | None
    attempts: int
    next_attempt_at: datetime | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Attempt(Record):
    """One ``delivery_attempts`` row: a step of one recipient's timeline."""

    id: int
    email_id: str
    recipient_id: str
    attempt_id: str
    destination: str
    attempt: int
    status: RecipientStatus
    scope: AttemptScope
    mx_host: str | None
    smtp_code: int | None
    enhanced_code: str | None
    response: str | None
    #: The class of this attempt's failure: a deferral's too (the recipient's is a bounce's).
    bounce_type: BounceType | None
    bounce_rule: str | None
    duration_ms: int
    #: The TLS of the attempt's connection ("TLSv1.3"; None: plaintext or none made),
    #: the policy that applied (model.TlsPolicySource) and whether the certificate was
    #: verified; all None on rows from before they were kept.
    tls_version: str | None
    tls_policy: TlsPolicySource | None
    tls_verified: bool | None
    created_at: datetime


def tls_columns(tls: TlsInfo | None) -> dict[str, Any]:
    """A timeline row's TLS columns; None: no SMTP connection was involved."""
    if tls is None:
        return {"tls_version": None, "tls_policy": None, "tls_verified": None}
    return {"tls_version": tls.version, "tls_policy": str(tls.policy), "tls_verified": tls.verified}


@dataclass(frozen=True, slots=True)
class Event(Record):
    """One ``events`` row: an outbox entry the webhook dispatcher sends."""

    id: str
    type: EventType
    email_id: str
    recipient_id: str | None
    domain_id: str | None
    sequence: int
    payload: dict[str, Any]
    created_at: datetime
    dispatched_at: datetime | None


@dataclass(frozen=True, slots=True)
class ListedEmail:
    """An email of the send log, with how many recipients it has."""

    email: Email
    recipient_count: int


# The statements run for every message are built once, with parameters: building
# one costs more CPU than SQLite takes to run it, on the loop every delivery shares.

_SUPPRESSED = select(suppressions.c.address).where(
    suppressions.c.domain_id == bindparam("domain_id"),
    suppressions.c.address.in_(bindparam("addresses", expanding=True)),
    (suppressions.c.expires_at.is_(None)) | (suppressions.c.expires_at > bindparam("now")),
)
_EMAIL = select(sent_emails).where(sent_emails.c.id == bindparam("email_id"))
_EMAILS = (
    select(sent_emails)
    .where(sent_emails.c.id.in_(bindparam("email_ids", expanding=True)))
    .order_by(sent_emails.c.id)
)
_RECIPIENTS_OF = (
    select(email_recipients)
    .where(email_recipients.c.email_id.in_(bindparam("email_ids", expanding=True)))
    .order_by(email_recipients.c.email_id, email_recipients.c.position)
)
_LAST_SEQUENCES = (
    select(events.c.email_id, func.max(events.c.sequence))
    .where(events.c.email_id.in_(bindparam("email_ids", expanding=True)))
    .group_by(events.c.email_id)
)
#: The columns to set come from the parameters (SQLAlchemy sets every key not bound here).
_MOVE_RECIPIENTS = update(email_recipients).where(
    email_recipients.c.id.in_(bindparam("recipient_ids", expanding=True)),
    email_recipients.c.status.in_(bindparam("allowed_from", expanding=True)),
)


async def insert_emails(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    await insert_in_parts(conn, sent_emails, rows)


async def insert_recipients(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    await insert_in_parts(conn, email_recipients, rows)


async def insert_events(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    await insert_in_parts(conn, events, rows)


async def insert_attempts(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """In list order, so their ids (the timeline's order) follow it."""
    if rows:
        await conn.execute(insert(delivery_attempts), list(rows))


async def suppressed_addresses(
    conn: AsyncConnection, domain_id: str, addresses: Iterable[str], now: datetime
) -> set[str]:
    wanted = sorted({address.lower() for address in addresses})
    if not wanted:
        return set()
    params = {"domain_id": domain_id, "addresses": wanted, "now": now}
    return {row.address for row in await conn.execute(_SUPPRESSED, params)}


async def lock_email(conn: AsyncConnection, email_id: str) -> Email | None:
    """Read the email row, holding its lock on PostgreSQL until the transaction ends.

    Two workers recording outcomes for one email (two destination domains)
    then derive its status one after the other, never from a stale read.
    """
    found = await lock_emails(conn, [email_id])
    return found[0] if found else None


async def lock_emails(conn: AsyncConnection, email_ids: Iterable[str]) -> list[Email]:
    """:func:`lock_email` for many, in id order: two batches locking overlapping
    emails take their locks in the same order, so they cannot deadlock.
    """
    statement = _EMAILS if conn.dialect.name == "sqlite" else _EMAILS.with_for_update()
    params = {"email_ids": sorted(set(email_ids))}
    return [Email.from_row(row) for row in await conn.execute(statement, params)]


async def get_emails(conn: AsyncConnection, email_ids: Iterable[str]) -> list[Email]:
    """These emails in id order, read without locking them (the engine's look before sending)."""
    params = {"email_ids": sorted(set(email_ids))}
    return [Email.from_row(row) for row in await conn.execute(_EMAILS, params)]


async def recipients_of(conn: AsyncConnection, email_ids: Iterable[str]) -> list[Recipient]:
    """Every recipient of these emails, each email's in order."""
    params = {"email_ids": sorted(set(email_ids))}
    return [Recipient.from_row(row) for row in await conn.execute(_RECIPIENTS_OF, params)]


async def to_addresses(conn: AsyncConnection, email_ids: Iterable[str]) -> dict[str, list[str]]:
    """The ``to`` recipients of each of these emails, in the order they were given."""
    ids = sorted(set(email_ids))
    if not ids:
        return {}
    statement = (
        select(email_recipients.c.email_id, email_recipients.c.address)
        .where(email_recipients.c.email_id.in_(ids), email_recipients.c.kind == "to")
        .order_by(email_recipients.c.email_id, email_recipients.c.position)
    )
    found: dict[str, list[str]] = {email_id: [] for email_id in ids}
    for row in await conn.execute(statement):
        found[row.email_id].append(row.address)
    return found


async def with_complaints(conn: AsyncConnection, email_ids: Iterable[str]) -> set[str]:
    """Those of these emails a recipient complained about: their ``last_event`` is
    ``complained`` while their status stays ``delivered`` (docs/API.md)."""
    ids = sorted(set(email_ids))
    if not ids:
        return set()
    statement = (
        select(email_recipients.c.email_id)
        .where(
            email_recipients.c.email_id.in_(ids),
            email_recipients.c.status == RecipientStatus.COMPLAINED,
        )
        .distinct()
    )
    return {row.email_id for row in await conn.execute(statement)}


async def last_event_sequences(conn: AsyncConnection, email_ids: Iterable[str]) -> dict[str, int]:
    """The highest event sequence of each of these emails (absent: no event yet)."""
    params = {"email_ids": sorted(set(email_ids))}
    return {row[0]: int(row[1]) for row in await conn.execute(_LAST_SEQUENCES, params)}


async def get_email(conn: AsyncConnection, email_id: str) -> Email | None:
    return Email.from_optional((await conn.execute(_EMAIL, {"email_id": email_id})).first())


async def get_recipients(conn: AsyncConnection, email_id: str) -> list[Recipient]:
    return await recipients_of(conn, [email_id])


async def get_attempts(conn: AsyncConnection, email_id: str) -> list[Attempt]:
    """The email's timeline rows, in the order they were written."""
    statement = (
        select(delivery_attempts)
        .where(delivery_attempts.c.email_id == email_id)
        .order_by(delivery_attempts.c.id)
    )
    return [Attempt.from_row(row) for row in await conn.execute(statement)]


async def get_events(conn: AsyncConnection, email_id: str) -> list[Event]:
    statement = select(events).where(events.c.email_id == email_id).order_by(events.c.sequence)
    return [Event.from_row(row) for row in await conn.execute(statement)]


async def next_event_sequence(conn: AsyncConnection, email_id: str) -> int:
    statement = select(func.coalesce(func.max(events.c.sequence), 0)).where(
        events.c.email_id == email_id
    )
    return int((await conn.execute(statement)).scalar_one()) + 1


@dataclass(frozen=True)
class RecipientMove:
    """One recipient's new status and columns, guarded by the statuses it may come from."""

    recipient_id: str
    status: RecipientStatus
    allowed_from: tuple[RecipientStatus, ...]
    values: dict[str, Any]


#: Rows per statement: a move binds one parameter per column (up to nine), and
#: PostgreSQL takes at most 32,767 parameters in one statement.
_MOVES_PER_STATEMENT = 500


async def move_recipients(conn: AsyncConnection, moves: Sequence[RecipientMove]) -> set[str]:
    """Move many recipients; return the ids of those whose guard let them move.

    One ``UPDATE ... FROM (VALUES ...) RETURNING`` per new status (and set of
    columns), not one per recipient: on SQLite every statement is a round trip
    to the database thread while the write lock is held and the other writers wait.
    """
    groups: dict[tuple[Any, ...], list[RecipientMove]] = defaultdict(list)
    for move in moves:
        groups[(move.status, move.allowed_from, tuple(move.values))].append(move)
    moved: set[str] = set()
    for (status, allowed_from, names), group in groups.items():
        for start in range(0, len(group), _MOVES_PER_STATEMENT):
            part = group[start : start + _MOVES_PER_STATEMENT]
            result = await conn.execute(
                _move_statement(names, len(part)),
                _move_parameters(status, allowed_from, names, part),
            )
            moved.update(result.scalars())
    return moved


@functools.lru_cache(maxsize=1024)
def _move_statement(names: tuple[str, ...], rows: int) -> TextualSelect:
    """The statement that moves ``rows`` recipients setting ``names``, built once per shape.

    Text with typed parameters, not ``values()``: SQLAlchemy cannot cache a statement
    holding a ``VALUES`` list, so each batch compiled its statement afresh (with
    literals, ~9% of a delivery process's CPU in a profile), and asyncpg prepared each
    one anew. This text is compiled once per shape, and on PostgreSQL each parameter
    carries its cast (``$2::TIMESTAMP WITH TIME ZONE``) as it did.
    """
    types = {"id": email_recipients.c.id.type} | {
        name: email_recipients.c[name].type for name in names
    }
    columns = ", ".join(types)
    tuples = ", ".join(
        "(" + ", ".join(f":m{row}_{name}" for name in types) + ")" for row in range(rows)
    )
    sets = ", ".join(["status=:status", *(f"{name}=moves.{name}" for name in names)])
    # Only column names the table has (``email_recipients.c`` raises on any other) and
    # parameter names go into the text; every value is bound.
    sql = (
        f"WITH moves({columns}) AS (VALUES {tuples}) "  # noqa: S608
        f"UPDATE email_recipients SET {sets} FROM moves "
        "WHERE email_recipients.id = moves.id AND email_recipients.status IN :allowed_from "
        "RETURNING email_recipients.id"
    )
    binds = [
        bindparam(f"m{row}_{name}", type_=type_)
        for row in range(rows)
        for name, type_ in types.items()
    ]
    return (
        text(sql)
        .bindparams(
            bindparam("status", type_=email_recipients.c.status.type),
            bindparam("allowed_from", expanding=True, type_=email_recipients.c.status.type),
            *binds,
        )
        .columns(id=email_recipients.c.id.type)
    )


def _move_parameters(
    status: RecipientStatus,
    allowed_from: tuple[RecipientStatus, ...],
    names: tuple[str, ...],
    moves: Sequence[RecipientMove],
) -> dict[str, Any]:
    parameters: dict[str, Any] = {
        "status": str(status),
        "allowed_from": [str(s) for s in allowed_from],
    }
    for row, move in enumerate(moves):
        parameters[f"m{row}_id"] = move.recipient_id
        for name in names:
            parameters[f"m{row}_{name}"] = move.values[name]
    return parameters


async def set_recipients_status(
    conn: AsyncConnection,
    recipient_ids: Sequence[str],
    new_status: RecipientStatus,
    allowed_from: Iterable[RecipientStatus],
    values: dict[str, Any],
) -> None:
    """Move many recipients to one status, when the caller need not know which moved."""
    if recipient_ids:
        await conn.execute(_MOVE_RECIPIENTS, _move(new_status, recipient_ids, allowed_from, values))


def _move(
    new_status: RecipientStatus,
    recipient_ids: Sequence[str],
    allowed_from: Iterable[RecipientStatus],
    values: dict[str, Any],
) -> dict[str, Any]:
    allowed = [str(s) for s in allowed_from]
    return (
        {"recipient_ids": list(recipient_ids), "allowed_from": allowed}
        | values
        | {"status": str(new_status)}
    )


async def set_emails_status(
    conn: AsyncConnection, email_ids: Sequence[str], status: EmailStatus, now: datetime
) -> None:
    await conn.execute(
        update(sent_emails)
        .where(sent_emails.c.id.in_(list(email_ids)))
        .values(status=str(status), updated_at=now)
    )


async def set_scheduled_at(
    conn: AsyncConnection, email_id: str, scheduled_at: datetime, now: datetime
) -> None:
    """Move a scheduled email's time (``PATCH /v1/emails/{id}``); its jobs move apart."""
    await conn.execute(
        update(sent_emails)
        .where(sent_emails.c.id == email_id)
        .values(scheduled_at=scheduled_at, updated_at=now)
    )


async def set_next_attempt(
    conn: AsyncConnection, recipient_ids: Sequence[str], when: datetime, now: datetime
) -> None:
    """Deferred recipients retried now (``POST /v1/emails/{id}/retry``); their jobs move apart."""
    await conn.execute(
        update(email_recipients)
        .where(
            email_recipients.c.id.in_(list(recipient_ids)),
            email_recipients.c.status == str(RecipientStatus.DEFERRED),
        )
        .values(next_attempt_at=when, updated_at=now)
    )


@dataclass(frozen=True)
class EmailFilter:
    status: EmailStatus | None = None
    #: Only emails with at least one recipient in this status.
    recipient_status: RecipientStatus | None = None
    recipient: str | None = None
    from_address: str | None = None
    domain_id: str | None = None
    tag: tuple[str, str] | None = None
    since: datetime | None = None
    until: datetime | None = None
    message_id: str | None = None
    #: Only emails of this source; None: the customer's mail, never Postline's own.
    source: EmailSource | None = None


async def list_emails(
    conn: AsyncConnection, where: EmailFilter, before_id: str | None, limit: int
) -> list[ListedEmail]:
    """The send log, newest first; ids are time-ordered, so the cursor is an id."""
    count = (
        select(func.count())
        .where(email_recipients.c.email_id == sent_emails.c.id)
        .scalar_subquery()
        .label("recipient_count")
    )
    statement = select(sent_emails, count).order_by(sent_emails.c.id.desc()).limit(limit)
    conditions: list[Any] = []
    if before_id:
        conditions.append(sent_emails.c.id < before_id)
    if where.status:
        conditions.append(sent_emails.c.status == str(where.status))
    if where.from_address:
        conditions.append(sent_emails.c.from_address == where.from_address.lower())
    if where.domain_id:
        conditions.append(sent_emails.c.domain_id == where.domain_id)
    if where.since:
        conditions.append(sent_emails.c.created_at >= where.since)
    if where.until:
        conditions.append(sent_emails.c.created_at < where.until)
    if where.message_id:
        conditions.append(sent_emails.c.message_id == where.message_id)
    if where.source is not None:
        conditions.append(sent_emails.c.source == str(where.source))
    else:
        conditions.append(sent_emails.c.source.not_in([str(s) for s in OWN_SOURCES]))
    if where.recipient_status is not None:
        # Through the index on (status, email_id): the emails with a recipient in this
        # status, whether a few among many (deferred) or most of them (delivered).
        conditions.append(
            sent_emails.c.id.in_(
                select(email_recipients.c.email_id).where(
                    email_recipients.c.status == str(where.recipient_status)
                )
            )
        )
    if where.recipient:
        # Through the index on address: the few emails of one address, not a probe per
        # email of the log until a page is found (2 s on SQLite for a rare address
        # among 100,000 emails, bench/dashboard_render.py).
        conditions.append(
            sent_emails.c.id.in_(
                select(email_recipients.c.email_id).where(
                    email_recipients.c.address == where.recipient.lower()
                )
            )
        )
    if where.tag:
        key, value = where.tag
        conditions.append(sent_emails.c.tags[key].as_string() == value)
    if conditions:
        statement = statement.where(and_(*conditions))
    return [
        ListedEmail(Email.from_row(row), int(row.recipient_count))
        for row in await conn.execute(statement)
    ]


@dataclass(frozen=True, slots=True)
class Notification(Record):
    """Mail Postline sent about an email (a DSN), as the email's detail shows it."""

    id: str
    source: EmailSource
    status: RecipientStatus  # the notification's recipient's: did it reach the sender?
    recipient: str
    created_at: datetime
    updated_at: datetime


async def notifications_about(conn: AsyncConnection, email_id: str) -> list[Notification]:
    """The mail Postline sent about this email (its DSNs), oldest first, per recipient."""
    statement = (
        select(
            sent_emails.c.id,
            sent_emails.c.source,
            email_recipients.c.status,
            email_recipients.c.address.label("recipient"),
            sent_emails.c.created_at,
            sent_emails.c.updated_at,
        )
        .join(email_recipients, email_recipients.c.email_id == sent_emails.c.id)
        .where(sent_emails.c.original_email_id == email_id)
        .order_by(sent_emails.c.id, email_recipients.c.position)
    )
    return [Notification.from_row(row) for row in await conn.execute(statement)]


async def deferred_by_destination(conn: AsyncConnection) -> dict[str, int]:
    """Recipients waiting for a retry, per destination domain."""
    statement = (
        select(email_recipients.c.destination, func.count())
        .where(email_recipients.c.status == str(RecipientStatus.DEFERRED))
        .group_by(email_recipients.c.destination)
    )
    return {row[0]: int(row[1]) for row in await conn.execute(statement)}


async def recipients_by_address(
    conn: AsyncConnection, address: str, domain_id: str | None, customer_only: bool, limit: int
) -> list[Recipient]:
    """The rows of one address across emails, newest email first (the recipient lookup):
    through the index on ``address``, within one domain when ``domain_id`` is set."""
    statement = (
        select(email_recipients)
        .join(sent_emails, sent_emails.c.id == email_recipients.c.email_id)
        .where(email_recipients.c.address == address.lower())
        .order_by(email_recipients.c.email_id.desc(), email_recipients.c.position)
        .limit(limit)
    )
    if domain_id is not None:
        statement = statement.where(sent_emails.c.domain_id == domain_id)
    if customer_only:
        statement = statement.where(sent_emails.c.source.not_in([str(s) for s in OWN_SOURCES]))
    return [Recipient.from_row(row) for row in await conn.execute(statement)]
