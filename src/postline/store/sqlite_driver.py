"""SQLAlchemy's aiosqlite adapter, with one trip to the database thread per statement.

aiosqlite runs each sqlite3 call in the connection's own thread and hands the
answer back to the event loop; SQLAlchemy's adapter makes four such calls per
statement (open a cursor, execute, fetch the rows, close the cursor). Every trip
waits for the event loop to come round again, and on SQLite a write
transaction holds the database's one write lock through all of its trips: in a
process busy with 32 SMTP sessions each trip is a loop iteration of everybody
else's work. Here the cursor is opened, executed, read and closed in one
function run in that thread, so a statement costs one trip.

A transaction's ``BEGIN`` (``store.db`` sends it, DEFERRED for a read and IMMEDIATE
for a write) makes no trip of its own: it is kept and run in the same trip, just
before the transaction's first statement. A read of one statement is then two trips
(the statement, the ROLLBACK) instead of three, a write of one statement two instead
of four (with the ROLLBACK skipped below), and a transaction that ran no statement
makes none. A one-row read (three trips, each two
thread handoffs and a wake-up of the event loop) cost 0.8-1.1 ms of CPU before, and
1,000 API key lookups 0.91 / 1.04 ms each before against 0.78 / 0.88 after. A write
takes SQLite's lock with its first statement rather than before it, which only
shortens how long the lock is held; a ``BEGIN`` that fails
(the lock not taken within the busy timeout) fails that first statement. And a COMMIT
or ROLLBACK with no transaction open (SQLAlchemy rolls back every connection given
back to its pool, after a commit too) makes no trip either.

A write may go further and defer its plain INSERTs (``Database.write(defer_inserts=
True)``; the ``sqlite_defer_inserts`` execution option): each is kept, like the
``BEGIN``, and run in the trip of the next statement that must answer, or of the
COMMIT. SQLite has one writer for every process on a file, and the write lock is
held from the first statement to the COMMIT, across every trip; a trip waits for
the event loop, which under load is busy with everybody else's requests. At 200
single sends a second the accept path's group commit (seven trips: two reads, four
INSERTs, the COMMIT) held the lock 26-34 ms on average, and the delivery and webhook
processes waited behind it; sent as one trip it held it 7.5-7.7 ms (interleaved
runs, docs/PERFORMANCE.md, "Stop 38"). An INSERT's error (a Message-ID taken)
is then raised by the statement or COMMIT it ran with, and the transaction is rolled
back as for any error. A caller that catches that statement's error as its own (a
statement SQLite undoes alone) cannot commit the transaction without the INSERT: its
COMMIT is refused (``failed_insert``). A deferred INSERT answers no rowcount and no
lastrowid, so only callers that read neither ask for it.

It keeps to aiosqlite's own machinery (``Connection._execute`` runs a function
in the connection's thread, as aiosqlite's public methods do); the rest is
SQLAlchemy's adapter as it is.
"""

from __future__ import annotations

import collections
import re
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, cast

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util import EMPTY_DICT
from sqlalchemy.util.concurrency import await_

#: What one trip brings back: description, rowcount, lastrowid and the rows.
_Answer = tuple[Any, int, int | None, list[Any]]
#: A statement kept for the next trip: the function that runs it, the SQL, its parameters.
_Deferred = tuple[Callable[[sqlite3.Connection, str, Any], _Answer], str, Any]

#: The statements ``store.db`` opens a transaction with (``BEGIN`` and its modes).
_BEGIN = re.compile(r"BEGIN(?: DEFERRED| IMMEDIATE| EXCLUSIVE)?", re.IGNORECASE)


def _execute(conn: sqlite3.Connection, operation: str, parameters: Any) -> _Answer:
    cursor = conn.cursor()
    try:
        cursor.execute(operation, parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else []
        return description, cursor.rowcount, cursor.lastrowid, rows
    finally:
        cursor.close()


def _executemany(conn: sqlite3.Connection, operation: str, parameters: Any) -> _Answer:
    cursor = conn.cursor()
    try:
        cursor.executemany(operation, parameters)
        return cursor.description, cursor.rowcount, cursor.lastrowid, []
    finally:
        cursor.close()


def _after_begin(
    conn: sqlite3.Connection,
    begin: str | None,
    deferred: list[_Deferred],
    work: Any,
    operation: str,
    parameters: Any,
) -> tuple[_Answer, bool]:
    """The statement's answer, and whether a transaction is open after it."""
    _catch_up(conn, begin, deferred)
    answer: _Answer = work(conn, operation, parameters)
    return answer, conn.in_transaction


#: Set on the error of a deferred INSERT (``_catch_up``): the statement it is raised
#: from did not fail, so the transaction must not commit even if that error is caught.
_DEFERRED_FAILED = "postline_deferred_insert_failed"


def _catch_up(conn: sqlite3.Connection, begin: str | None, deferred: list[_Deferred]) -> None:
    """Run what was kept for this trip: the transaction's ``BEGIN``, the deferred INSERTs."""
    if begin is not None:
        conn.execute(begin)
    for work, operation, parameters in deferred:
        try:
            work(conn, operation, parameters)
        except Exception as exc:
            setattr(exc, _DEFERRED_FAILED, True)
            raise


def _commit_after(conn: sqlite3.Connection, begin: str | None, deferred: list[_Deferred]) -> None:
    _catch_up(conn, begin, deferred)
    conn.commit()


class OneTripCursor(AsyncAdapt_aiosqlite_cursor):
    """A cursor whose statement is executed, read and closed in the thread at once."""

    __slots__ = (
        "_answer_description",
        "_answer_lastrowid",
        "_answer_rowcount",
        "_arraysize",
        "defer",
    )

    _awaitable_cursor_close = False

    def __init__(self, adapt_connection: Any) -> None:
        # No sqlite3 cursor is opened here (that is a trip of its own): each
        # execute opens and closes its own in the thread.
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._soft_closed_memoized = EMPTY_DICT
        self._rows: collections.deque[Any] = collections.deque()
        self._answer_description: Any = None
        self._answer_rowcount = -1
        self._answer_lastrowid: int | None = None
        self._arraysize = 1
        #: Set for a plain INSERT of a write that defers them (``defer_inserts``).
        self.defer = False

    @property
    def description(self) -> Any:
        return self._answer_description

    @property
    def rowcount(self) -> int:
        return self._answer_rowcount

    @property
    def lastrowid(self) -> Any:
        return self._answer_lastrowid

    @property
    def arraysize(self) -> int:
        return self._arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._arraysize = value

    async def _execute_async(self, operation: Any, parameters: Any) -> None:
        if isinstance(operation, str) and _BEGIN.fullmatch(operation) and not parameters:
            # Run with the transaction's first statement (OneTripConnection).
            cast("OneTripConnection", self._adapt_connection).pending_begin = operation
            self._answer_nothing()
            return
        parameters = () if parameters is None else parameters
        if self.defer:
            self._keep(_execute, operation, parameters)
            return
        await self._run(_execute, operation, parameters)

    async def _executemany_async(self, operation: Any, seq_of_parameters: Any) -> None:
        if self.defer:
            self._keep(_executemany, operation, seq_of_parameters)
            return
        await self._run(_executemany, operation, seq_of_parameters)

    def _keep(self, work: Any, operation: str, parameters: Any) -> None:
        cast("OneTripConnection", self._adapt_connection).deferred.append(
            (work, operation, parameters)
        )
        self._answer_nothing()

    def _answer_nothing(self) -> None:
        self._answer_description, self._answer_rowcount = None, -1
        self._answer_lastrowid, self._rows = None, collections.deque()

    async def _run(self, work: Any, operation: Any, parameters: Any) -> None:
        connection: aiosqlite.Connection = self._connection  # type: ignore[assignment]
        adapted = cast("OneTripConnection", self._adapt_connection)
        async with adapted._execute_mutex:
            begin, adapted.pending_begin = adapted.pending_begin, None
            deferred, adapted.deferred = adapted.deferred, []
            # Any statement may leave one open; if its caller is cancelled before the
            # answer comes, the ROLLBACK that follows must be sent.
            adapted.transaction_ended = False
            try:
                answer, open_after = await connection._execute(  # type: ignore[no-untyped-call]
                    _after_begin, connection._conn, begin, deferred, work, operation, parameters
                )
            except Exception as exc:
                if getattr(exc, _DEFERRED_FAILED, False):
                    adapted.failed_insert = exc
                raise
            adapted.transaction_ended = not open_after
        description, rowcount, lastrowid, rows = answer
        self._answer_description = description
        self._answer_rowcount = rowcount
        self._answer_lastrowid = lastrowid
        self._rows = collections.deque(rows)

    async def _async_soft_close(self) -> None:
        return None

    def close(self) -> None:
        self._rows.clear()

    def setinputsizes(self, *inputsizes: Any) -> None:
        return None

    def nextset(self) -> None:
        return None

    def fetchall(self) -> Sequence[Any]:
        rows = list(self._rows)
        self._rows.clear()
        return rows


class OneTripConnection(AsyncAdapt_aiosqlite_connection):
    """Keeps a transaction's ``BEGIN`` until its first statement (``pending_begin``),
    and deferred INSERTs until the next trip (``deferred``)."""

    __slots__ = ("deferred", "failed_insert", "pending_begin", "transaction_ended")
    _cursor_cls = OneTripCursor

    def __init__(self, dbapi: Any, connection: Any) -> None:
        super().__init__(dbapi, connection)
        self.pending_begin: str | None = None
        self.deferred: list[_Deferred] = []
        #: The error of a deferred INSERT of this transaction: it is never committed.
        self.failed_insert: Exception | None = None
        #: No statement run since the last COMMIT or ROLLBACK (``_transaction_open``).
        self.transaction_ended = True

    def commit(self) -> None:
        if self.failed_insert is not None:
            # Raised by a later statement, whose caller may have caught it as its own:
            # the transaction lacks that INSERT's rows, so it is rolled back instead.
            raise self.dbapi.sqlite.OperationalError(
                f"not committed: a deferred INSERT of this transaction failed: {self.failed_insert}"
            )
        if self.deferred:
            try:
                await_(self._commit_deferred())
            except Exception as error:
                self._handle_exception(error)
            self.transaction_ended = True
        elif self._transaction_open():
            super().commit()
            self.transaction_ended = True

    async def _commit_deferred(self) -> None:
        """The deferred INSERTs and the COMMIT in one trip. When one fails the
        transaction stays open (``transaction_ended`` is not set), so the ROLLBACK
        that follows is sent."""
        connection: aiosqlite.Connection = self._connection  # type: ignore[assignment]
        async with self._execute_mutex:
            begin, self.pending_begin = self.pending_begin, None
            deferred, self.deferred = self.deferred, []
            self.transaction_ended = False
            await connection._execute(  # type: ignore[no-untyped-call]
                _commit_after, connection._conn, begin, deferred
            )

    def rollback(self) -> None:
        self.deferred = []  # never sent: nothing of them to undo
        self.failed_insert = None
        if self._transaction_open():
            super().rollback()
            self.transaction_ended = True

    def _transaction_open(self) -> bool:
        """Whether a COMMIT or ROLLBACK has anything to end; a pending BEGIN is dropped.

        SQLAlchemy also rolls back every connection it is given back, after the
        transaction was committed: without this that was one more trip per write.
        Kept on this side, not asked of SQLite at the end: a statement whose caller
        was cancelled may still be waiting for the database thread, and the ROLLBACK
        queued behind it must not be skipped. So a statement counts as opening one
        until its trip brings back SQLite's own word (``in_transaction``), taken in the
        same trip: a statement run outside a transaction (``Database.lookup``) then
        leaves nothing to end.
        """
        if self.pending_begin is not None:
            self.pending_begin = None  # no statement ran: SQLite never opened it
            return False
        return not self.transaction_ended


class OneTripDBAPI(AsyncAdapt_aiosqlite_dbapi):
    """Hands SQLAlchemy :class:`OneTripConnection` instead of the adapter's own."""

    def connect(self, *arg: Any, **kw: Any) -> OneTripConnection:
        adapted = super().connect(*arg, **kw)
        return OneTripConnection(self, adapted._connection)


def one_trip_dbapi() -> OneTripDBAPI:
    """The ``module`` for ``create_async_engine`` on a ``sqlite+aiosqlite`` URL."""
    return OneTripDBAPI(aiosqlite, sqlite3)
