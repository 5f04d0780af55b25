"""The database handle: one async engine, write and read transactions.

SQLite needs care to be both durable and concurrent: WAL, synchronous=FULL
(the 202 promise), a busy timeout for other processes, ``BEGIN IMMEDIATE``
for writes so two writers never deadlock on a lock upgrade, one writer at a
time inside this process so they queue on an asyncio lock instead of spinning
in the busy handler, and a lock file taken by every writer of every process
(``store.writer_turn``) so the write lock passes to the next process the moment
it is free instead of at the end of a busy-handler sleep. Each statement is
one trip to the connection's thread (``store.sqlite_driver``): a write
transaction holds the lock across its trips.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

from sqlalchemy import event, make_url, text
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.util import await_only

from postline.store.sealing import OPTION, SecretBox
from postline.store.sqlite_driver import one_trip_dbapi
from postline.store.writer_turn import WriterTurn

_SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    "PRAGMA busy_timeout=10000",
    "PRAGMA foreign_keys=ON",
)


#: PostgreSQL connections kept open per process, and opened beyond them for a burst.
#: A connection beyond the pool's size is closed as soon as it is given back, and a
#: backend costs PostgreSQL a fork and some milliseconds of CPU to start: with 10
#: kept and 20 more for bursts, a benchmark of three processes opened 1,410 backends.
#: Most connections are now kept (the pool opens them only as they are needed), the
#: same 30 at most per process as before, which three processes fit within
#: PostgreSQL's default max_connections of 100.
_PG_POOL_SIZE = 25
_PG_MAX_OVERFLOW = 5


#: ``Database.notify``: NOTIFY with the channel bound, not spliced into the SQL.
_NOTIFY = text("SELECT pg_notify(:channel, '')")

#: The ``sqlite_begin`` of ``Database.lookup``: statements run in SQLite's autocommit.
_NO_TRANSACTION = "none"
#: The execution option of ``Database.write(defer_inserts=True)``.
_DEFER_INSERTS = "sqlite_defer_inserts"


def _install_sqlite_hooks(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the driver: we emit BEGIN ourselves.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in _SQLITE_PRAGMAS:
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        if mode != _NO_TRANSACTION:
            conn.exec_driver_sql(f"BEGIN {mode}")

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _defer_inserts(
        _conn: Any, cursor: Any, _sql: str, _params: Any, context: Any, _many: bool
    ) -> None:
        # ``Database.write(defer_inserts=True)``: a plain INSERT waits for the next trip
        # (store.sqlite_driver). One that returns rows must answer at once.
        if (
            context is not None
            and context.isinsert
            and context.execution_options.get(_DEFER_INSERTS)
            and not (context.compiled is not None and context.compiled.effective_returning)
        ):
            cursor.defer = True


def _create_private_sqlite_file(url: str) -> None:
    """Create a new SQLite database file 0600 before SQLite does (with the umask's
    0644): it holds the sealed secrets and every email, and SQLite gives the -wal and
    -shm files it creates next to it the database file's own mode."""
    path = _sqlite_path(url)
    if path is None:
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:
        return  # it exists (its mode is the operator's: see postline.private_files), or
        # its directory does not, which SQLite itself reports on connect
    os.close(fd)


def _sqlite_path(url: str) -> str | None:
    """The database file of a SQLite URL; None for one in memory or given as a URI."""
    path = make_url(url).database
    if not path or path == ":memory:" or path.startswith("file:"):
        return None
    return path


def _writer_turn(url: str) -> WriterTurn | None:
    path = _sqlite_path(url)
    return WriterTurn(f"{path}-writer") if path is not None else None


def create_engine(url: str, secrets: SecretBox | None = None) -> AsyncEngine:
    options: dict[str, Any] = {OPTION: secrets} if secrets is not None else {}
    if url.startswith("sqlite"):
        _create_private_sqlite_file(url)
        engine = create_async_engine(
            url,
            pool_size=8,
            max_overflow=8,
            execution_options=options,
            module=one_trip_dbapi(),
        )
        _install_sqlite_hooks(engine)
        return engine
    engine = create_async_engine(
        url, pool_size=_PG_POOL_SIZE, max_overflow=_PG_MAX_OVERFLOW, execution_options=options
    )
    _install_postgresql_ping(engine)
    return engine


def _install_postgresql_ping(engine: AsyncEngine) -> None:
    """Ping every connection as it leaves the pool, in one round trip.

    A connection that died while pooled (PostgreSQL restarted, the backend terminated)
    is then replaced before the caller's first statement, so no request fails for it.
    SQLAlchemy's own ``pool_pre_ping`` does the same in three round trips on asyncpg
    (BEGIN, the ping, ROLLBACK, for pgbouncer's transaction mode, which Postline does
    not use): a one-statement read went from 0.72 to 0.57 ms (bench/reads.py, medians),
    and the old ping was 8.5% of a distributed worker's CPU samples. A
    ``DisconnectionError`` raised here makes the pool discard the connection and check
    out another (documented pessimistic disconnect handling).
    """

    @event.listens_for(engine.sync_engine, "checkout")
    def _ping(_dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        try:
            await_only(record.driver_connection.fetchrow(";"))
        except Exception as exc:
            raise DisconnectionError(f"a pooled connection failed its ping: {exc}") from exc


class Database:
    """Owns the engine; hands out transactions.

    ``secrets`` seals and opens the secret columns (postline.store.sealing); a handle
    without one reads plaintext and sealed-nothing rows only, and refuses to write a
    secret rather than store it in the clear.
    """

    def __init__(self, url: str, secrets: SecretBox | None = None) -> None:
        self.url = url
        self.secrets = secrets
        self.engine = create_engine(url, secrets)
        self.is_sqlite = url.startswith("sqlite")
        self._write_lock = asyncio.Lock() if self.is_sqlite else None
        self._turn = _writer_turn(url) if self.is_sqlite else None
        # Reads on PostgreSQL without BEGIN and ROLLBACK: two round trips fewer per read.
        # At PostgreSQL's READ COMMITTED every statement takes its own snapshot inside a
        # transaction too, so a read block sees nothing different. SQLite keeps its read
        # transaction: there it is what holds one snapshot for the whole block.
        self._reader = (
            self.engine
            if self.is_sqlite
            else self.engine.execution_options(isolation_level="AUTOCOMMIT")
        )
        self._looker = (
            self.engine.execution_options(sqlite_begin=_NO_TRANSACTION)
            if self.is_sqlite
            else self._reader
        )

    @contextlib.asynccontextmanager
    async def write(
        self, *, defer_inserts: bool = False, urgent: bool = False
    ) -> AsyncIterator[AsyncConnection]:
        """A read-write transaction, committed when the block ends without error.

        ``urgent``: a client is waiting on this write (an accept). On SQLite the
        writes of every process that are not urgent let it have the one write lock
        first (store.writer_turn). Nothing changes on PostgreSQL.

        ``defer_inserts``: on SQLite the block's plain INSERTs go to the database with
        its next statement that answers, or with the COMMIT (store.sqlite_driver), so
        the one write lock is held for fewer trips. For a block that reads no rowcount
        or lastrowid of an INSERT: an INSERT's error then comes from a later statement
        of the block or from its end, and a block whose INSERT failed never commits,
        even if it caught that error as another statement's. Nothing changes on
        PostgreSQL.
        """
        if self._write_lock is None:
            async with self.engine.begin() as conn:
                yield conn
            return
        turn = (
            self._turn.held(urgent=urgent) if self._turn is not None else contextlib.nullcontext()
        )
        async with self._write_lock, turn, self.engine.connect() as conn:
            conn = await conn.execution_options(
                sqlite_begin="IMMEDIATE", **{_DEFER_INSERTS: defer_inserts}
            )
            async with conn.begin():
                yield conn

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read. On SQLite a snapshot (a transaction that is rolled back); on
        PostgreSQL statements in autocommit, each with its own snapshot as inside a
        READ COMMITTED transaction (measured: 1.06 -> 0.80 ms per one-statement read).
        Never a place to write: nothing here is committed on SQLite, and everything
        is, statement by statement, on PostgreSQL.

        Once the block has read what it wanted, a connection that died since
        (PostgreSQL restarted, the backend terminated) cannot change the answer:
        the failed rollback only takes the connection out of the pool.
        """
        async with self._connection(self._reader) as conn:
            yield conn

    @staticmethod
    @contextlib.asynccontextmanager
    async def _connection(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
        conn = await engine.connect()
        try:
            yield conn
        except BaseException:
            with contextlib.suppress(Exception):
                await conn.close()
            raise
        try:
            await conn.close()
        except Exception:
            with contextlib.suppress(Exception):
                await conn.invalidate()

    @contextlib.asynccontextmanager
    async def lookup(self) -> AsyncIterator[AsyncConnection]:
        """A read of one statement, which needs no snapshot beyond its own: on SQLite
        outside a transaction, one trip to the connection's thread instead of two (no
        ROLLBACK to send); on PostgreSQL the same as ``read``. Every API request looks
        up its key this way, and a send its domain. A block of more statements reads
        each at its own moment, as ``read`` does on PostgreSQL.
        """
        async with self._connection(self._looker) as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def listen(
        self, channel: str, heard: Callable[[], None]
    ) -> AsyncIterator[Callable[[], bool]]:
        """PostgreSQL's LISTEN on ``channel`` for the block, on a pooled connection kept
        for it: ``heard()`` for each notification. Yields whether that connection is
        still open; when it is not, the block should end (and listen again).
        """
        if self.is_sqlite:
            raise RuntimeError("LISTEN is PostgreSQL's; SQLite has no notifications")
        async with self.engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver = raw.driver_connection
            assert driver is not None

            def notified(*_: object) -> None:
                heard()

            await driver.add_listener(channel, notified)
            try:
                yield lambda: not driver.is_closed()
            finally:
                with contextlib.suppress(Exception):
                    await driver.remove_listener(channel, notified)

    @staticmethod
    async def notify(conn: AsyncConnection, channel: str) -> None:
        """PostgreSQL's NOTIFY on ``channel`` in ``conn``'s transaction: heard by every
        ``listen`` of the database when it commits, and never if it rolls back.
        ``pg_notify`` with the channel as a parameter, so that no SQL is built from a
        string and one statement serves every call."""
        await conn.execute(_NOTIFY, {"channel": channel})

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def close(self) -> None:
        await self.engine.dispose()
        if self._turn is not None:
            self._turn.close()
