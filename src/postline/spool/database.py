"""The database spool: bodies in ``spool_bodies``, for installations spread over hosts.

When the API on one host accepts and a worker on another delivers, a body
must live where both can read it, and the shared database is already that
place. A body is durable when ``put_many`` returns because the commit is
(synchronous commit on PostgreSQL, ``synchronous=FULL`` on SQLite), and one
transaction per batch gives all or none for free. The acceptor writes bodies in
its own transaction (``shares_store``): one commit for the bodies and their rows.
The deliveries that start together read their bodies in one statement
(``Spool.get``), as they read their emails.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

from sqlalchemy import bindparam, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from postline.spool.base import Spool, SpoolError, SpoolFull, SpoolMissing, check_ref
from postline.store.db import Database
from postline.store.errors import is_disk_full
from postline.store.schema import spool_bodies
from postline.store.types import utcnow


def _reason(exc: BaseException) -> str:
    """The driver's own message: SQLAlchemy's would quote the parameters, i.e. the bodies."""
    orig = getattr(exc, "orig", None)
    return str(orig) if isinstance(orig, BaseException) else type(exc).__name__


@contextlib.contextmanager
def _spool_errors(action: str) -> Iterator[None]:
    """Callers of a spool handle spool errors, whichever backend is behind it."""
    try:
        yield
    except (SQLAlchemyError, OSError) as exc:
        if is_disk_full(exc):
            raise SpoolFull("the database spool is full") from exc
        raise SpoolError(f"cannot {action} the database spool: {_reason(exc)}") from exc


_READ = select(spool_bodies.c.ref, spool_bodies.c.body).where(
    spool_bodies.c.ref.in_(bindparam("refs", expanding=True))
)


class DatabaseSpool(Spool):
    shares_store = True

    def __init__(self, db: Database) -> None:
        super().__init__()
        self.db = db

    def _upsert(self) -> postgresql.Insert | sqlite.Insert:
        """Re-putting a ref replaces the body and its age, as a rename does in the file spool."""
        insert = sqlite.insert if self.db.is_sqlite else postgresql.insert
        statement = insert(spool_bodies)
        return statement.on_conflict_do_update(
            index_elements=[spool_bodies.c.ref],
            set_={
                "body": statement.excluded.body,
                "created_at": statement.excluded.created_at,
            },
        )

    async def put_many(
        self, items: Sequence[tuple[str, bytes]], conn: AsyncConnection | None = None
    ) -> None:
        # Every ref is checked before the database is touched. A ref given twice
        # keeps its last body, as with files (and PostgreSQL refuses to upsert
        # one key twice in a statement).
        latest = {check_ref(ref): body for ref, body in items}
        if not latest:
            return
        now = utcnow()
        rows = [{"ref": ref, "body": body, "created_at": now} for ref, body in latest.items()]
        with _spool_errors("write to"):
            if conn is not None:
                await conn.execute(self._upsert(), rows)
                return
            async with self.db.write() as own:
                await own.execute(self._upsert(), rows)

    async def read_many(self, refs: list[str]) -> list[bytes | Exception]:
        with _spool_errors("read from"):
            async with self.db.read() as conn:
                rows = (await conn.execute(_READ, {"refs": sorted(set(refs))})).all()
        bodies = {ref: bytes(body) for ref, body in rows}
        return [bodies[ref] if ref in bodies else SpoolMissing(ref) for ref in refs]

    async def delete(self, ref: str) -> None:
        statement = delete(spool_bodies).where(spool_bodies.c.ref == check_ref(ref))
        with _spool_errors("delete from"):
            async with self.db.write() as conn:
                await conn.execute(statement)

    async def delete_many(self, refs: Sequence[str]) -> None:
        checked = sorted({check_ref(ref) for ref in refs})
        if not checked:
            return
        statement = delete(spool_bodies).where(spool_bodies.c.ref.in_(checked))
        with _spool_errors("delete from"):
            async with self.db.write() as conn:
                await conn.execute(statement)

    async def refs_older_than(self, moment: datetime) -> list[str]:
        # A naive moment is local time, as the file spool reads it.
        statement = (
            select(spool_bodies.c.ref)
            .where(spool_bodies.c.created_at < moment.astimezone(UTC))
            .order_by(spool_bodies.c.created_at, spool_bodies.c.ref)
        )
        with _spool_errors("read from"):
            async with self.db.read() as conn:
                return list((await conn.execute(statement)).scalars())
