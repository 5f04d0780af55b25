"""MTA-STS policies as fetched, shared by every worker and kept across restarts.

One row per destination domain: the policy, when it was fetched and until when
it may be used (``max_age`` after the fetch). A failed refresh leaves the row
as it was and notes the error: the policy in force is not given up for it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from postline.store.records import Record
from postline.store.schema import mta_sts_policies


@dataclass(frozen=True, slots=True)
class StoredPolicy(Record):
    domain: str
    policy_id: str
    mode: str
    mx: str  # a JSON list of patterns
    max_age: int
    fetched_at: datetime
    expires_at: datetime
    last_error: str | None

    @property
    def patterns(self) -> tuple[str, ...]:
        return tuple(json.loads(self.mx))


async def get_policy(conn: AsyncConnection, domain: str) -> StoredPolicy | None:
    statement = select(mta_sts_policies).where(mta_sts_policies.c.domain == domain)
    return StoredPolicy.from_optional((await conn.execute(statement)).first())


async def put_policy(
    conn: AsyncConnection,
    *,
    domain: str,
    policy_id: str,
    mode: str,
    patterns: tuple[str, ...],
    max_age: int,
    fetched_at: datetime,
    expires_at: datetime,
) -> None:
    """Store a freshly fetched policy in place of the domain's last one."""
    values = {
        "domain": domain,
        "policy_id": policy_id,
        "mode": mode,
        "mx": json.dumps(list(patterns)),
        "max_age": max_age,
        "fetched_at": fetched_at,
        "expires_at": expires_at,
        "last_error": None,
    }
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    statement = (
        insert(mta_sts_policies)
        .values(**values)
        .on_conflict_do_update(
            index_elements=["domain"],
            set_={key: value for key, value in values.items() if key != "domain"},
        )
    )
    await conn.execute(statement)


async def note_error(conn: AsyncConnection, domain: str, error: str) -> None:
    """A refresh failed: say why, and keep the policy."""
    statement = (
        update(mta_sts_policies)
        .where(mta_sts_policies.c.domain == domain)
        .values(last_error=error[:1000])
    )
    await conn.execute(statement)
