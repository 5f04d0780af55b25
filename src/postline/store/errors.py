"""Recognising "out of space" wherever it comes from.

A full disk is not an outage: the process is healthy and the client should try
again later, so the API answers 507 (and SMTP ``452 4.3.1``) rather than the
503 of a store that does not answer. The error can surface as the OS's
``ENOSPC``/``EDQUOT`` (the file spool, SQLite's files), as SQLite's
``SQLITE_FULL`` or as PostgreSQL's ``disk_full``, each wrapped by SQLAlchemy or
by one of our own errors, so the whole chain of causes is searched.
"""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Iterator

#: PostgreSQL's ``disk_full`` (asyncpg raises it as DiskFullError).
PG_DISK_FULL = "53100"

_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def causes(exc: BaseException) -> Iterator[BaseException]:
    """The error and what it wraps: ours, SQLAlchemy's, the adapter's, the driver's."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        wrapped = getattr(current, "orig", None)
        current = wrapped if isinstance(wrapped, BaseException) else current.__cause__


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or anything it wraps) says the storage has no space left."""
    for cause in causes(exc):
        if isinstance(cause, OSError) and cause.errno in _FULL_ERRNOS:
            return True
        if getattr(cause, "sqlstate", None) == PG_DISK_FULL:
            return True
        if getattr(cause, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            return True
    return False
