"""Named queries for sending domains."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from postline.store.records import AnyRow, Record
from postline.store.schema import api_keys, domains, sent_emails
from postline.store.sealing import seal, unseal
from postline.store.types import utcnow


@dataclass(frozen=True, slots=True)
class Domain(Record):
    """A sending domain, with the DKIM key that signs its mail."""

    id: str
    name: str
    dkim_selector: str
    dkim_private_key: str | None  # plaintext here; sealed in the database
    verified: bool
    # The last DNS check: purpose ("dkim", "spf", ...) -> "verified" | "mismatch" | "missing".
    verification: dict[str, str] | None
    bounce_notifications: bool
    track_opens: bool
    track_clicks: bool
    tracking_host: str | None
    created_at: datetime
    updated_at: datetime

    @property
    def live_tracking_host(self) -> str | None:
        """The tracking host once its CNAME checked out (``verify``); before, links use
        POSTLINE_TRACKING_URL, so none leads to a name that does not resolve yet."""
        checks = self.verification or {}
        return self.tracking_host if checks.get("tracking") == "verified" else None


async def insert_domain(
    conn: AsyncConnection, *, domain_id: str, name: str, selector: str, private_key: str
) -> None:
    now = utcnow()
    await conn.execute(
        domains.insert().values(
            id=domain_id,
            name=name,
            dkim_selector=selector,
            dkim_private_key=seal(conn, private_key),
            verified=False,
            bounce_notifications=True,
            created_at=now,
            updated_at=now,
        )
    )


def _domain(conn: AsyncConnection, row: AnyRow) -> Domain:
    values = dict(row._mapping)
    values["dkim_private_key"] = unseal(conn, values["dkim_private_key"])
    return Domain.from_mapping(values)


async def get_domain(conn: AsyncConnection, domain_id: str) -> Domain | None:
    statement = select(domains).where(domains.c.id == domain_id)
    row = (await conn.execute(statement)).first()
    return None if row is None else _domain(conn, row)


#: Built once: each send reads its sending domain (``store.keys`` says why).
_BY_NAMES = select(domains).where(domains.c.name.in_(bindparam("names", expanding=True)))


async def get_domain_by_name(conn: AsyncConnection, name: str) -> Domain | None:
    return (await get_domains_by_name(conn, [name])).get(name.lower())


async def get_domains_by_name(conn: AsyncConnection, names: list[str]) -> dict[str, Domain]:
    """The sending domains of these names (any case), by their lower-case name."""
    found = await conn.execute(_BY_NAMES, {"names": sorted({name.lower() for name in names})})
    return {row.name: _domain(conn, row) for row in found}


async def list_domains(conn: AsyncConnection, only_id: str | None = None) -> list[Domain]:
    statement = select(domains).order_by(domains.c.name)
    if only_id is not None:
        statement = statement.where(domains.c.id == only_id)
    return [_domain(conn, row) for row in await conn.execute(statement)]


async def set_bounce_notifications(conn: AsyncConnection, domain_id: str, enabled: bool) -> None:
    await conn.execute(
        update(domains)
        .where(domains.c.id == domain_id)
        .values(bounce_notifications=enabled, updated_at=utcnow())
    )


async def set_tracking(
    conn: AsyncConnection, domain_id: str, *, opens: bool | None, clicks: bool | None
) -> None:
    """A domain's tracking defaults; None leaves one as it is."""
    values: dict[str, object] = {"updated_at": utcnow()}
    if opens is not None:
        values["track_opens"] = opens
    if clicks is not None:
        values["track_clicks"] = clicks
    await conn.execute(update(domains).where(domains.c.id == domain_id).values(**values))


async def set_tracking_host(conn: AsyncConnection, domain_id: str, host: str | None) -> None:
    """The domain's own tracking host, or None for POSTLINE_TRACKING_URL. The caller
    checked that no other domain has it (the unique index says so too). A new host's
    CNAME is unchecked: the last check's ``tracking`` status was about another name."""
    current = (
        await conn.execute(
            select(domains.c.tracking_host, domains.c.verification).where(domains.c.id == domain_id)
        )
    ).first()
    if current is None or current.tracking_host == host:
        return
    checks = {k: v for k, v in (current.verification or {}).items() if k != "tracking"}
    await conn.execute(
        update(domains)
        .where(domains.c.id == domain_id)
        .values(tracking_host=host, verification=checks or None, updated_at=utcnow())
    )


async def domain_with_tracking_host(conn: AsyncConnection, host: str) -> str | None:
    """The id of the domain whose tracking host ``host`` is, or None."""
    found = await conn.scalar(select(domains.c.id).where(domains.c.tracking_host == host))
    return None if found is None else str(found)


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
