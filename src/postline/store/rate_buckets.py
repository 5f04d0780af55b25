"""Named statements for the token buckets of the per-key rate limits.

A bucket is one row: the tokens it held at ``updated_at`` (epoch seconds).
Its tokens at any later time follow from those two and the rate, so a take
that finds too few changes nothing, and an idle bucket costs nothing.

A take that succeeds is one statement, an upsert that refills and takes in
SQL and returns what is left: it runs on every authenticated request, so it
has to be short. Only a refusal reads the row again, in the same transaction,
to say how long to wait. "Now" is PostgreSQL's clock there, so API hosts
whose clocks disagree share one bucket fairly; on SQLite, which only
processes of one host can share, it is that host's clock.
"""

from __future__ import annotations

import functools
import time
from typing import Any

from sqlalchemy import Float, String, bindparam, cast, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from postline.store.schema import rate_buckets


def _now(is_sqlite: bool) -> Any:
    """Epoch seconds, one value for the whole statement."""
    if is_sqlite:
        return bindparam("now", type_=Float())
    return cast(func.extract("epoch", func.statement_timestamp()), Float())


def _available(is_sqlite: bool) -> Any:
    """The bucket's tokens now: what it held, refilled since, at most ``burst``.

    Time never runs backwards here: a clock stepped back refills nothing.
    """
    least, greatest = (func.min, func.max) if is_sqlite else (func.least, func.greatest)
    rate, burst = bindparam("rate", type_=Float()), bindparam("burst", type_=Float())
    elapsed = greatest(0.0, _now(is_sqlite) - rate_buckets.c.updated_at)
    return least(burst, rate_buckets.c.tokens + elapsed * rate)


@functools.cache
def _take(is_sqlite: bool) -> Any:
    """Parameters: ``bucket``, ``rate``, ``burst``, ``count`` (and ``now`` on SQLite).

    Returns ``tokens`` left if ``count`` tokens were taken, no row if the bucket had
    fewer (the row is left as it was). A new bucket starts full.
    """
    dialect: Any = sqlite if is_sqlite else postgresql
    now = _now(is_sqlite)
    available = _available(is_sqlite)
    count = bindparam("count", type_=Float())
    statement = dialect.insert(rate_buckets).values(
        bucket=bindparam("bucket", type_=String()),
        tokens=bindparam("burst", type_=Float()) - count,
        updated_at=now,
    )
    return statement.on_conflict_do_update(
        index_elements=[rate_buckets.c.bucket],
        set_={"tokens": available - count, "updated_at": now},
        where=available >= count,
    ).returning(rate_buckets.c.tokens)


@functools.cache
def _look(is_sqlite: bool) -> Any:
    """The bucket's tokens now; parameters as ``_take``."""
    return select(_available(is_sqlite)).where(
        rate_buckets.c.bucket == bindparam("bucket", type_=String())
    )


async def take(
    conn: AsyncConnection, is_sqlite: bool, bucket: str, rate: float, burst: float, count: int = 1
) -> tuple[bool, float]:
    """Take ``count`` tokens in the caller's write transaction: (taken, tokens left or
    available). ``count`` is at most ``burst`` (``queue.base.check_bucket``)."""
    params: dict[str, Any] = {
        "bucket": bucket,
        "rate": rate,
        "burst": float(burst),
        "count": float(count),
    }
    if is_sqlite:
        params["now"] = time.time()
    left = (await conn.execute(_take(is_sqlite), params)).scalar()
    if left is not None:
        return True, float(left)
    if is_sqlite:
        params["now"] = time.time()
    available = (await conn.execute(_look(is_sqlite), params)).scalar()
    return False, float(available or 0.0)
