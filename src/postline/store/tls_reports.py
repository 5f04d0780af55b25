"""Counts of TLS sessions under destinations' policies, per day: the TLS reports' figures.

Workers add their counts (``add_counts``, an upsert that adds); one worker
claims a finished day of a domain (``claim_day``) and sends its report.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from postline.store.records import Record
from postline.store.schema import tls_report_counts

#: A count's key: (day, domain, policy type, result, MX host).
CountKey = tuple[str, str, str, str, str]


@dataclass(frozen=True, slots=True)
class TlsCount(Record):
    day: str
    domain: str
    policy_type: str
    result: str
    mx_host: str
    count: int
    reported_at: datetime | None


async def add_counts(conn: AsyncConnection, counts: dict[CountKey, int]) -> None:
    if not counts:
        return
    rows = [
        {
            "day": day,
            "domain": domain,
            "policy_type": policy_type,
            "result": result,
            "mx_host": mx_host,
            "count": count,
        }
        for (day, domain, policy_type, result, mx_host), count in sorted(counts.items())
    ]
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    statement = insert(tls_report_counts)
    statement = statement.on_conflict_do_update(
        index_elements=["day", "domain", "policy_type", "result", "mx_host"],
        set_={"count": tls_report_counts.c.count + statement.excluded.count},
    )
    await conn.execute(statement, rows)


async def counts_for(conn: AsyncConnection, domain: str, since_day: str) -> list[TlsCount]:
    """A domain's counts from ``since_day`` on, oldest first."""
    statement = (
        select(tls_report_counts)
        .where(tls_report_counts.c.domain == domain, tls_report_counts.c.day >= since_day)
        .order_by(tls_report_counts.c.day)
    )
    return [TlsCount.from_row(row) for row in await conn.execute(statement)]


async def unreported_days(conn: AsyncConnection, before_day: str) -> list[tuple[str, str]]:
    """(day, domain) of finished days whose report was not sent yet."""
    statement = (
        select(tls_report_counts.c.day, tls_report_counts.c.domain)
        .where(tls_report_counts.c.day < before_day, tls_report_counts.c.reported_at.is_(None))
        .distinct()
        .order_by(tls_report_counts.c.day, tls_report_counts.c.domain)
    )
    return [(row.day, row.domain) for row in await conn.execute(statement)]


async def claim_day(conn: AsyncConnection, day: str, domain: str, now: datetime) -> list[TlsCount]:
    """Mark a day's counts of a domain reported; the counts when this caller claimed
    them ([] when another worker did first)."""
    claimed = (
        update(tls_report_counts)
        .where(
            tls_report_counts.c.day == day,
            tls_report_counts.c.domain == domain,
            tls_report_counts.c.reported_at.is_(None),
        )
        .values(reported_at=now)
    )
    if not (await conn.execute(claimed)).rowcount:
        return []
    statement = select(tls_report_counts).where(
        tls_report_counts.c.day == day, tls_report_counts.c.domain == domain
    )
    return [TlsCount.from_row(row) for row in await conn.execute(statement)]


async def forget_before(conn: AsyncConnection, day: str) -> int:
    """Delete the reported counts of days before ``day``; how many rows went."""
    statement = delete(tls_report_counts).where(
        tls_report_counts.c.day < day, tls_report_counts.c.reported_at.is_not(None)
    )
    return int((await conn.execute(statement)).rowcount or 0)
