"""Alembic migrations run up and down on SQLite and PostgreSQL and match the schema."""

from __future__ import annotations

import asyncio
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from postline.config import normalize_database_url
from postline.store.db import Database
from postline.store.migrate import downgrade, upgrade
from postline.store.schema import metadata


async def _tables(url: str) -> set[str]:
    db = Database(url)
    try:
        async with db.read() as conn:
            return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
    finally:
        await db.close()


async def _diff(url: str) -> list[Any]:
    def compare(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))

    db = Database(url)
    try:
        async with db.read() as conn:
            return await conn.run_sync(compare)
    finally:
        await db.close()


async def test_up_down_up_and_matches_schema(database_url: str) -> None:
    url = normalize_database_url(database_url)
    await asyncio.to_thread(upgrade, url)
    expected = set(metadata.tables) | {"alembic_version"}
    assert await _tables(url) == expected
    assert await _diff(url) == [], "migrations and store/schema.py have drifted apart"
    await asyncio.to_thread(downgrade, url)
    assert await _tables(url) <= {"alembic_version"}
    await asyncio.to_thread(upgrade, url)
    assert await _tables(url) == expected


async def test_sqlite_runs_in_wal_mode(tmp_path: object) -> None:
    url = normalize_database_url(f"sqlite:///{tmp_path}/wal.db")
    await asyncio.to_thread(upgrade, url)
    db = Database(url)
    try:
        async with db.read() as conn:
            mode = (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar()
            timeout = (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar()
            sync = (await conn.exec_driver_sql("PRAGMA synchronous")).scalar()
    finally:
        await db.close()
    assert mode == "wal"
    assert timeout and int(timeout) >= 1000
    assert sync == 2  # FULL: a commit survives power loss, as the 202 promises
