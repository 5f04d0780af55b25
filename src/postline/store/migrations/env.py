"""Alembic environment: async engines on SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection

from postline.store.db import create_engine
from postline.store.schema import metadata

#: Any fixed number: the advisory lock that serialises concurrent migrations.
_LOCK_KEY = 0x706F73746C696E65  # "postline"


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Several api and worker processes may start at once and each migrate:
            # one at a time, and the later ones find the schema already at head.
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
        context.run_migrations()


async def _main() -> None:
    url = context.config.attributes["database_url"]
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


asyncio.run(_main())
