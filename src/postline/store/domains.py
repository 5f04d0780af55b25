"""Named queries for sending domains."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from postline.store.schema import api_keys, domains, sent_emails
from postline.store.types import utcnow


async def insert_domain(
    conn: AsyncConnection, *, domain_id: str, name: str, selector: str, private_key: str
) -> None:
    now = utcnow()
    await conn.execute(
        domains.insert().values(
            id=domain_id,
            name=name,
            dkim_selector=selector,
            dkim_private_key=private_key,
            verified=False,
            bounce_notifications=True,
            created_at=now,
            updated_at=now,
        )
    )


async def get_domain(conn: AsyncConnection, domain_id: str) -> Row[Any] | None:
    return (await conn.execute(select(domains).where(domains.c.id == domain_id))).first()


async def get_domain_by_name(conn: AsyncConnection, name: str) -> Row[Any] | None:
    statement = select(domains).where(domains.c.name == name.lower())
    return (await conn.execute(statement)).first()


async def list_domains(conn: AsyncConnection, only_id: str | None = None) -> list[Row[Any]]:
    statement = select(domains).order_by(domains.c.name)
    if only_id is not None:
        statement = statement.where(domains.c.id == only_id)
    return list((await conn.execute(statement)).all())


async def set_bounce_notifications(conn: AsyncConnection, domain_id: str, enabled: bool) -> None:
    await conn.execute(
        update(domains)
        .where(domains.c.id == domain_id)
        .values(bounce_notifications=enabled, updated_at=utcnow())
    )


async def set_verification(
    conn: AsyncConnection, domain_id: str, checks: dict[str, str], verified: bool
) -> None:
    await conn.execute(
        update(domains)
        .where(domains.c.id == domain_id)
        .values(verification=checks, verified=verified, updated_at=utcnow())
    )


async def count_emails(conn: AsyncConnection, domain_id: str) -> int:
    statement = select(func.count()).where(sent_emails.c.domain_id == domain_id)
    return int((await conn.execute(statement)).scalar_one())


async def delete_domain(conn: AsyncConnection, domain_id: str) -> None:
    await conn.execute(delete(api_keys).where(api_keys.c.domain_id == domain_id))
    await conn.execute(delete(domains).where(domains.c.id == domain_id))
