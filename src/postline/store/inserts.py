"""INSERTs of many rows in parts, so that a large batch does not hold up the event loop."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table, insert
from sqlalchemy.ext.asyncio import AsyncConnection

#: Rows per INSERT statement. SQLAlchemy turns each row's values into parameters on the
#: event loop: 50-60 ms for the 1,000 recipients of the largest batch in one statement,
#: during which no other request is answered. In parts, the loop answers in between.
ROWS_PER_INSERT = 200


async def insert_in_parts(
    conn: AsyncConnection, table: Table, rows: Sequence[dict[str, Any]]
) -> None:
    """INSERT ``rows`` into ``table``, ``ROWS_PER_INSERT`` per statement, in order."""
    for start in range(0, len(rows), ROWS_PER_INSERT):
        await conn.execute(insert(table), list(rows[start : start + ROWS_PER_INSERT]))
