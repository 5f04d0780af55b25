"""Breakers opened or closed by hand, kept as an ordered log of commands.

Each worker holds its breakers in memory; a command in the database is how an
operator's ``POST /v1/destinations/{domain}/breaker`` on any API process
reaches every worker, and how a restarted worker learns about it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from postline.store.records import Record
from postline.store.schema import breaker_commands

Action = Literal["open", "close"]


@dataclass(frozen=True, slots=True)
class BreakerCommand(Record):
    """One operator's open or close of one destination's breaker, in log order."""

    id: int  # increasing: a worker remembers the last one it applied
    domain: str
    action: Action
    created_at: datetime


async def record_command(conn: AsyncConnection, domain: str, action: Action, at: datetime) -> None:
    await conn.execute(insert(breaker_commands).values(domain=domain, action=action, created_at=at))


async def commands_after(conn: AsyncConnection, after_id: int) -> list[BreakerCommand]:
    """Commands newer than ``after_id``, oldest first."""
    statement = (
        select(breaker_commands)
        .where(breaker_commands.c.id > after_id)
        .order_by(breaker_commands.c.id)
    )
    return [BreakerCommand.from_row(row) for row in await conn.execute(statement)]


async def latest_commands(conn: AsyncConnection) -> list[BreakerCommand]:
    """The newest command per domain (what a starting worker must honour), oldest first."""
    newest = (
        select(func.max(breaker_commands.c.id))
        .group_by(breaker_commands.c.domain)
        .scalar_subquery()
    )
    statement = (
        select(breaker_commands)
        .where(breaker_commands.c.id.in_(newest))
        .order_by(breaker_commands.c.id)
    )
    return [BreakerCommand.from_row(row) for row in await conn.execute(statement)]
