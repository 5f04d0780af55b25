"""The outbound TLS tables on both stores: MTA-STS policies and TLS report counts."""

from __future__ import annotations

from datetime import timedelta

from postline.config import normalize_database_url
from postline.store import mta_sts as sts_store
from postline.store import tls_reports as report_store
from postline.store.db import Database
from postline.store.migrate import upgrade_async
from postline.store.types import utcnow


async def test_counts_add_up_across_flushes_and_a_day_is_claimed_once(database_url: str) -> None:
    url = normalize_database_url(database_url)
    await upgrade_async(url)
    db = Database(url)
    try:
        key = ("2026-12-05", "a.test", "sts", "success", "mx.a.test")
        failure = ("2026-12-05", "a.test", "no-policy-found", "sts-policy-fetch-error", "")
        async with db.write() as conn:
            await report_store.add_counts(conn, {key: 2, failure: 1})
        async with db.write() as conn:
            await report_store.add_counts(conn, {key: 3})
        async with db.read() as conn:
            assert await report_store.unreported_days(conn, "2026-12-06") == [
                ("2026-12-05", "a.test")
            ]
            assert await report_store.unreported_days(conn, "2026-12-05") == []
        now = utcnow()
        async with db.write() as conn:
            claimed = await report_store.claim_day(conn, "2026-12-05", "a.test", now)
        assert sorted((c.policy_type, c.result, c.count) for c in claimed) == [
            ("no-policy-found", "sts-policy-fetch-error", 1),
            ("sts", "success", 5),
        ]
        async with db.write() as conn:
            assert await report_store.claim_day(conn, "2026-12-05", "a.test", now) == []
            assert await report_store.forget_before(conn, "2026-12-06") == 2
    finally:
        await db.close()


async def test_a_new_policy_replaces_the_stored_one_and_a_failure_keeps_it(
    database_url: str,
) -> None:
    url = normalize_database_url(database_url)
    await upgrade_async(url)
    db = Database(url)
    try:
        now = utcnow()
        for policy_id, patterns in (("one", ("mx.a.test",)), ("two", ("*.a.test", "b.test"))):
            async with db.write() as conn:
                await sts_store.put_policy(
                    conn,
                    domain="a.test",
                    policy_id=policy_id,
                    mode="enforce",
                    patterns=patterns,
                    max_age=86400,
                    fetched_at=now,
                    expires_at=now + timedelta(days=1),
                )
        async with db.write() as conn:
            await sts_store.note_error(conn, "a.test", "fetching failed")
        async with db.read() as conn:
            stored = await sts_store.get_policy(conn, "a.test")
        assert stored is not None
        assert (stored.policy_id, stored.patterns, stored.last_error) == (
            "two",
            ("*.a.test", "b.test"),
            "fetching failed",
        )
    finally:
        await db.close()
