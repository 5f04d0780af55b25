"""Named queries for inbound routes and the mail they took (``inbound_routes``,
``inbound_messages``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from postline.store.records import Record
from postline.store.schema import domains, inbound_messages, inbound_routes


@dataclass(frozen=True, slots=True)
class InboundRoute(Record):
    """An address (or ``*@domain``) the inbound listener takes mail for."""

    id: str
    domain_id: str
    match: str
    events: bool
    created_at: datetime


@dataclass(frozen=True, slots=True)
class InboundMessage(Record):
    """One message a route took, with its raw bytes."""

    id: str
    route_id: str | None
    domain_id: str
    received_at: datetime
    mail_from: str
    rcpt_to: str
    size: int
    raw: bytes


@dataclass(frozen=True, slots=True)
class InboundSummary(Record):
    """A message a route took, for a list: its first bytes (the header, mostly) in place
    of the whole message, and the name of its domain."""

    id: str
    route_id: str | None
    domain_id: str
    domain: str
    received_at: datetime
    mail_from: str
    rcpt_to: str
    size: int
    head: bytes


#: How much of each message a list reads: enough for the header of nearly all mail.
HEAD_BYTES = 16 * 1024


async def add_route(conn: AsyncConnection, values: dict[str, Any]) -> None:
    await conn.execute(insert(inbound_routes).values(**values))


async def get_route(conn: AsyncConnection, route_id: str) -> InboundRoute | None:
    statement = select(inbound_routes).where(inbound_routes.c.id == route_id)
    return InboundRoute.from_optional((await conn.execute(statement)).first())


async def route_by_match(conn: AsyncConnection, match: str) -> InboundRoute | None:
    statement = select(inbound_routes).where(inbound_routes.c.match == match)
    return InboundRoute.from_optional((await conn.execute(statement)).first())


async def list_routes(
    conn: AsyncConnection, domain_id: str | None, after_id: str | None, limit: int
) -> list[InboundRoute]:
    """Oldest first, ``limit`` of them after ``after_id``; only the domain's when named."""
    statement = select(inbound_routes).order_by(inbound_routes.c.id).limit(limit)
    if domain_id is not None:
        statement = statement.where(inbound_routes.c.domain_id == domain_id)
    if after_id:
        statement = statement.where(inbound_routes.c.id > after_id)
    return [InboundRoute.from_row(row) for row in await conn.execute(statement)]


async def route_matches_of(conn: AsyncConnection, domain_id: str) -> list[str]:
    """The matches of a domain's routes, for the MX records its ``dns_records`` list."""
    statement = (
        select(inbound_routes.c.match)
        .where(inbound_routes.c.domain_id == domain_id)
        .order_by(inbound_routes.c.match)
    )
    return [str(match) for match in (await conn.execute(statement)).scalars()]


async def delete_route(conn: AsyncConnection, route_id: str) -> None:
    await conn.execute(delete(inbound_routes).where(inbound_routes.c.id == route_id))


async def add_message(conn: AsyncConnection, values: dict[str, Any]) -> None:
    await conn.execute(insert(inbound_messages).values(**values))


async def get_message(conn: AsyncConnection, message_id: str) -> InboundMessage | None:
    statement = select(inbound_messages).where(inbound_messages.c.id == message_id)
    return InboundMessage.from_optional((await conn.execute(statement)).first())


async def list_messages(
    conn: AsyncConnection, domain_id: str | None, before_id: str | None, limit: int
) -> list[InboundSummary]:
    """Newest first (ids are time-ordered), ``limit`` of them from before ``before_id``;
    only the domain's when named. Each carries the message's first ``HEAD_BYTES``."""
    m = inbound_messages.c
    statement = (
        select(
            m.id,
            m.route_id,
            m.domain_id,
            domains.c.name.label("domain"),
            m.received_at,
            m.mail_from,
            m.rcpt_to,
            m.size,
            func.substr(m.raw, 1, HEAD_BYTES).label("head"),
        )
        .join(domains, domains.c.id == m.domain_id)
        .order_by(m.id.desc())
        .limit(limit)
    )
    if domain_id is not None:
        statement = statement.where(m.domain_id == domain_id)
    if before_id:
        statement = statement.where(m.id < before_id)
    rows = (await conn.execute(statement)).all()
    return [InboundSummary.from_mapping({**r._mapping, "head": bytes(r.head)}) for r in rows]


async def domain_name(conn: AsyncConnection, domain_id: str) -> str | None:
    found = await conn.scalar(select(domains.c.name).where(domains.c.id == domain_id))
    return None if found is None else str(found)


async def delete_messages_before(conn: AsyncConnection, cutoff: datetime) -> int:
    """Forget routed mail received before ``cutoff``, as the retention purge forgets emails."""
    result = await conn.execute(
        delete(inbound_messages).where(inbound_messages.c.received_at < cutoff)
    )
    return int(result.rowcount or 0)
