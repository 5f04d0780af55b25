"""Named queries of the secret key's start-up step: check the key, seal old rows.

Run by every ``postline`` process after the migrations (postline.secrets), in one
write transaction, so it is idempotent and safe with several processes starting
at once on one database.
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.schema import Column

from postline.store.schema import domains, secret_check, webhooks
from postline.store.sealing import PREFIX, SecretBox, SecretKeyError
from postline.store.types import utcnow

#: What the check row holds, sealed.
_CHECK_TEXT = "postline secret key check"
_SECRET_COLUMNS: tuple[Column[str], ...] = (
    domains.c.dkim_private_key,
    webhooks.c.secret,
    webhooks.c.previous_secret,
)


async def verify_key(conn: AsyncConnection, box: SecretBox) -> None:
    """Raise SecretKeyError unless ``box`` opens what the database holds sealed.

    The first process to start on a database leaves its check row; a process with
    another key finds it and stops, before it can seal anything with that key.
    """
    make = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    await conn.execute(
        make(secret_check)
        .values(id=1, token=box.seal(_CHECK_TEXT), created_at=utcnow())
        .on_conflict_do_nothing(index_elements=["id"])
    )
    token = (await conn.execute(select(secret_check.c.token))).scalar_one()
    if box.open(token) != _CHECK_TEXT:
        raise SecretKeyError(f"the secret key does not decrypt the stored secrets ({box.where})")
    # Rows sealed before the check row existed (restored from elsewhere): one of each.
    for column in _SECRET_COLUMNS:
        sample = select(column).where(column.startswith(PREFIX, autoescape=True)).limit(1)
        value = (await conn.execute(sample)).scalar()
        if value is not None:
            box.open(value)


async def seal_plaintext(conn: AsyncConnection, box: SecretBox) -> int:
    """Seal every secret still stored in the clear (rows from before sealing, or
    written by an older version during a rolling upgrade); return how many."""
    sealed = 0
    for column in _SECRET_COLUMNS:
        table = column.table
        key = table.c.id
        plain = select(key, column).where(
            column.is_not(None), ~column.startswith(PREFIX, autoescape=True)
        )
        for row_id, value in (await conn.execute(plain)).all():
            await conn.execute(
                update(table).where(key == row_id).values({column.name: box.seal(value)})
            )
            sealed += 1
    return sealed
