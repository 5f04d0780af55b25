"""Named queries for webhook endpoints, their deliveries and the events outbox."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from postline.model import WebhookDeliveryStatus
from postline.store.records import AnyRow, Record
from postline.store.schema import domains, events, webhook_attempts, webhook_deliveries, webhooks
from postline.store.sealing import seal, unseal

# Plain strings into SQL, as store/emails.py does: every driver binds a str.
_PENDING = str(WebhookDeliveryStatus.PENDING)


@dataclass(frozen=True, slots=True)
class Webhook(Record):
    """A registered endpoint: where events go, signed with which secret."""

    id: str
    url: str
    events: list[str]  # event types, or ["*"]
    # Both secrets in plaintext here; sealed in the database (store.sealing).
    secret: str
    previous_secret: str | None  # still signs for a while after a rotation
    secret_rotated_at: datetime | None
    enabled: bool
    disabled_reason: str | None
    failing_since: datetime | None  # start of the current run of failed attempts
    domain_id: str | None  # None: every domain's events
    domain_name: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class WebhookDelivery(Record):
    """One event's delivery to one endpoint, as the API lists it."""

    id: str
    event_id: str  # also the webhook-id header: the same on every retry
    event_type: str
    webhook_id: str
    status: WebhookDeliveryStatus
    attempts: int
    next_attempt_at: datetime | None
    response_code: int | None
    response_body: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class DueDelivery(Record):
    """A leased delivery with what sending it needs: the event and its endpoint."""

    id: str
    event_id: str
    webhook_id: str
    attempts: int
    payload: dict[str, Any]
    url: str
    secret: str
    previous_secret: str | None
    secret_rotated_at: datetime | None
    enabled: bool
    failing_since: datetime | None
    #: Until when this lease keeps other workers off it (None: not leased, as in a test).
    lease_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class UndispatchedEvent(Record):
    """An outbox event not yet fanned out to the endpoints that want it."""

    id: str
    type: str
    domain_id: str | None


_SECRETS = ("secret", "previous_secret")


def _sealed(conn: AsyncConnection, values: dict[str, Any]) -> dict[str, Any]:
    """Column values to write, with the secrets among them sealed."""
    return {k: seal(conn, v) if k in _SECRETS else v for k, v in values.items()}


def _opened(conn: AsyncConnection, row: AnyRow) -> dict[str, Any]:
    """A row's values with its secrets in plaintext, for a record."""
    return {k: unseal(conn, v) if k in _SECRETS else v for k, v in row._mapping.items()}


def _webhook(conn: AsyncConnection, row: AnyRow) -> Webhook:
    return Webhook.from_mapping(_opened(conn, row))


_WITH_DOMAIN = select(webhooks, domains.c.name.label("domain_name")).select_from(
    webhooks.outerjoin(domains, webhooks.c.domain_id == domains.c.id)
)


async def insert_webhook(conn: AsyncConnection, values: dict[str, Any]) -> None:
    await conn.execute(insert(webhooks).values(**_sealed(conn, values)))


async def get_webhook(conn: AsyncConnection, webhook_id: str) -> Webhook | None:
    statement = _WITH_DOMAIN.where(webhooks.c.id == webhook_id)
    row = (await conn.execute(statement)).first()
    return None if row is None else _webhook(conn, row)


async def list_webhooks(conn: AsyncConnection, domain_id: str | None) -> list[Webhook]:
    statement = _WITH_DOMAIN.order_by(webhooks.c.id)
    if domain_id is not None:
        statement = statement.where(webhooks.c.domain_id == domain_id)
    return [_webhook(conn, row) for row in await conn.execute(statement)]


async def count_webhooks(conn: AsyncConnection, domain_id: str | None) -> int:
    """Endpoints of one domain, or the unscoped ones (``None``)."""
    column = webhooks.c.domain_id
    where = column.is_(None) if domain_id is None else column == domain_id
    found = await conn.scalar(select(func.count()).select_from(webhooks).where(where))
    return int(found or 0)


async def update_webhook(conn: AsyncConnection, webhook_id: str, values: dict[str, Any]) -> None:
    statement = update(webhooks).where(webhooks.c.id == webhook_id)
    await conn.execute(statement.values(**_sealed(conn, values)))


async def delete_webhook(conn: AsyncConnection, webhook_id: str) -> None:
    await conn.execute(delete(webhooks).where(webhooks.c.id == webhook_id))


async def enabled_webhooks(conn: AsyncConnection) -> list[Webhook]:
    statement = _WITH_DOMAIN.where(webhooks.c.enabled)
    return [_webhook(conn, row) for row in await conn.execute(statement)]


# --- the outbox -------------------------------------------------------------


async def insert_event(conn: AsyncConnection, values: dict[str, Any]) -> None:
    await conn.execute(insert(events).values(**values))


async def claim_undispatched(conn: AsyncConnection, limit: int) -> list[UndispatchedEvent]:
    """Events not yet fanned out, oldest first, locked against other dispatchers."""
    statement = (
        select(events.c.id, events.c.type, events.c.domain_id)
        .where(events.c.dispatched_at.is_(None))
        .order_by(events.c.id)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        statement = statement.with_for_update(skip_locked=True)
    return [UndispatchedEvent.from_row(row) for row in await conn.execute(statement)]


async def mark_dispatched(conn: AsyncConnection, event_ids: Sequence[str], now: datetime) -> None:
    await conn.execute(
        update(events).where(events.c.id.in_(list(event_ids))).values(dispatched_at=now)
    )


def new_delivery(
    *, delivery_id: str, event_id: str, webhook_id: str, now: datetime
) -> dict[str, Any]:
    """The row of a delivery not tried yet, due at once: for :func:`insert_deliveries`."""
    return {
        "id": delivery_id,
        "event_id": event_id,
        "webhook_id": webhook_id,
        "status": _PENDING,
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
        "updated_at": now,
    }


async def insert_deliveries(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """One row per (event, endpoint); a repeat of the same pair is ignored."""
    if not rows:
        return
    make = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    statement = make(webhook_deliveries).on_conflict_do_nothing(
        index_elements=["event_id", "webhook_id"]
    )
    await conn.execute(statement, list(rows))


# --- deliveries -------------------------------------------------------------

_DUE = select(
    webhook_deliveries,
    events.c.payload,
    events.c.type.label("event_type"),
    webhooks.c.url,
    webhooks.c.secret,
    webhooks.c.previous_secret,
    webhooks.c.secret_rotated_at,
    webhooks.c.enabled,
    webhooks.c.failing_since,
).select_from(
    webhook_deliveries.join(events, webhook_deliveries.c.event_id == events.c.id).join(
        webhooks, webhook_deliveries.c.webhook_id == webhooks.c.id
    )
)


async def lease_due_deliveries(
    conn: AsyncConnection, now: datetime, limit: int, lease: timedelta
) -> list[DueDelivery]:
    """Claim pending deliveries that are due, so no other worker sends them meanwhile."""
    candidates = (
        select(webhook_deliveries.c.id)
        .where(
            webhook_deliveries.c.status == _PENDING,
            webhook_deliveries.c.next_attempt_at <= now,
            (webhook_deliveries.c.lease_until.is_(None)) | (webhook_deliveries.c.lease_until < now),
            webhook_deliveries.c.webhook_id.in_(select(webhooks.c.id).where(webhooks.c.enabled)),
        )
        .order_by(webhook_deliveries.c.next_attempt_at)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        candidates = candidates.with_for_update(skip_locked=True)
    ids = [row.id for row in await conn.execute(candidates)]
    if not ids:
        return []
    await conn.execute(
        update(webhook_deliveries)
        .where(webhook_deliveries.c.id.in_(ids))
        .values(lease_until=now + lease)
    )
    statement = _DUE.where(webhook_deliveries.c.id.in_(ids))
    rows = await conn.execute(statement)
    return [DueDelivery.from_mapping(_opened(conn, row)) for row in rows]


@dataclass(frozen=True, slots=True)
class FinishedAttempt:
    """One attempt's result, for :func:`finish_attempts`."""

    delivery_id: str
    status: WebhookDeliveryStatus
    attempts: int
    next_attempt_at: datetime | None
    response_code: int | None
    response_body: str | None
    error: str | None
    duration_ms: int


_FINISH = (
    update(webhook_deliveries)
    .where(webhook_deliveries.c.id == bindparam("b_id"))
    .values(
        status=bindparam("b_status"),
        attempts=bindparam("b_attempts"),
        next_attempt_at=bindparam("b_next_attempt_at"),
        lease_until=None,
        response_code=bindparam("b_response_code"),
        response_body=bindparam("b_response_body"),
        updated_at=bindparam("b_now"),
    )
)


async def finish_attempts(
    conn: AsyncConnection, finished: Sequence[FinishedAttempt], now: datetime
) -> None:
    """Record attempts and their deliveries' new state: two statements for the lot."""
    if not finished:
        return
    await conn.execute(
        _FINISH,
        [
            {
                "b_id": f.delivery_id,
                "b_status": str(f.status),
                "b_attempts": f.attempts,
                "b_next_attempt_at": f.next_attempt_at,
                "b_response_code": f.response_code,
                "b_response_body": f.response_body,
                "b_now": now,
            }
            for f in finished
        ],
    )
    await conn.execute(
        insert(webhook_attempts),
        [
            {
                "delivery_id": f.delivery_id,
                "response_code": f.response_code,
                "response_body": f.response_body,
                "error": f.error,
                "duration_ms": f.duration_ms,
                "created_at": now,
            }
            for f in finished
        ],
    )


_WITH_EVENT_TYPE = select(webhook_deliveries, events.c.type.label("event_type")).select_from(
    webhook_deliveries.join(events, webhook_deliveries.c.event_id == events.c.id)
)


async def list_deliveries(
    conn: AsyncConnection, webhook_id: str, before_id: str | None, limit: int
) -> list[WebhookDelivery]:
    statement = (
        _WITH_EVENT_TYPE.where(webhook_deliveries.c.webhook_id == webhook_id)
        .order_by(webhook_deliveries.c.id.desc())
        .limit(limit)
    )
    if before_id:
        statement = statement.where(webhook_deliveries.c.id < before_id)
    return [WebhookDelivery.from_row(row) for row in await conn.execute(statement)]


async def get_delivery(conn: AsyncConnection, delivery_id: str) -> WebhookDelivery | None:
    statement = _WITH_EVENT_TYPE.where(webhook_deliveries.c.id == delivery_id)
    return WebhookDelivery.from_optional((await conn.execute(statement)).first())


async def replay_delivery(conn: AsyncConnection, delivery_id: str, now: datetime) -> None:
    """Send again now, with the same webhook-id; the attempt count goes on."""
    await conn.execute(
        update(webhook_deliveries)
        .where(webhook_deliveries.c.id == delivery_id)
        .values(status=_PENDING, next_attempt_at=now, lease_until=None, updated_at=now)
    )


async def count_pending(conn: AsyncConnection) -> int:
    statement = select(func.count()).where(webhook_deliveries.c.status == _PENDING)
    return int((await conn.execute(statement)).scalar_one())


async def release_deliveries(conn: AsyncConnection, delivery_ids: Sequence[str]) -> None:
    await conn.execute(
        update(webhook_deliveries)
        .where(webhook_deliveries.c.id.in_(list(delivery_ids)))
        .values(lease_until=None)
    )


async def deliveries_of_events(
    conn: AsyncConnection, event_ids: Sequence[str]
) -> list[WebhookDelivery]:
    """Every delivery of these events, to any endpoint (an email's detail shows them)."""
    if not event_ids:
        return []
    statement = _WITH_EVENT_TYPE.where(webhook_deliveries.c.event_id.in_(list(event_ids))).order_by(
        webhook_deliveries.c.id
    )
    return [WebhookDelivery.from_row(row) for row in await conn.execute(statement)]
