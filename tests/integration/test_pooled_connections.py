"""PostgreSQL connections that die while pooled (a restart, a failover, a terminated
backend) are found and replaced when they leave the pool, before the caller's first
statement: no read or write fails for them."""

from __future__ import annotations

from sqlalchemy import text

from postline.config import normalize_database_url
from postline.store.db import Database
from tests.acceptance.test_scale_out import terminate_backends


async def test_reads_and_writes_after_every_pooled_connection_died_succeed(
    postgres_url: str,
) -> None:
    db = Database(normalize_database_url(postgres_url))
    try:
        # Several connections in the pool, idle, then all of them killed at once.
        async with db.read() as a, db.read() as b, db.read() as c:
            for conn in (a, b, c):
                assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
        assert await terminate_backends(postgres_url) >= 3
        for _ in range(3):
            async with db.read() as conn:
                assert (await conn.execute(text("SELECT 2"))).scalar_one() == 2
        async with db.write() as conn:
            await conn.execute(text("CREATE TABLE survived (n int)"))
            await conn.execute(text("INSERT INTO survived VALUES (3)"))
        async with db.read() as conn:
            assert (await conn.execute(text("SELECT n FROM survived"))).scalar_one() == 3
    finally:
        await db.close()
