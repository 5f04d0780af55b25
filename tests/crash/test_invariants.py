"""The invariant checker is not vacuous: on an honest run it passes with the right counts,
and each kind of broken promise (a lost email, a bounced recipient that was received,
duplicates beyond what was in flight, a lost or invented event, an orphan spool file) is
reported by name. Postline runs in-process here, on SQLite, for speed: the checker reads
the store and the spool, not Postline's memory.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import pytest

from postline.retention import free_bodies
from postline.spool.spares import SPARE_DIR
from postline.store.types import utcnow
from tests.crash.invariants import (
    Expectation,
    InvariantReport,
    check_invariants,
    event_ids,
    received_copies,
)
from tests.harness.fake_mx import FakeMX
from tests.harness.postline import Factory, PostlineUnderTest

pytestmark = pytest.mark.timeout(60)


class Run:
    """Three emails delivered, delivered and hard-bounced, then Postline stopped."""

    def __init__(self, postline: PostlineUnderTest, fake_mx: FakeMX) -> None:
        self.postline = postline
        self.fake_mx = fake_mx
        self.expectation = Expectation()
        self.acked: Counter[str] = Counter()

    @property
    def database_url(self) -> str:
        return self.postline.settings.database_url

    @property
    def spool(self) -> Path:
        return self.postline.settings.spool_path

    async def send(self) -> None:
        self.fake_mx.on_rcpt("gone@dest.test", "550 5.1.1 no such user")
        for address, outcome in (
            ("a@dest.test", "delivered"),
            ("b@dest.test", "delivered"),
            ("gone@dest.test", "bounced"),
        ):
            email = await self.postline.send(to=address)
            self.expectation.add(email["id"], [address], outcome)
        for email_id in self.expectation.accepted:
            await self.postline.wait_until_final(email_id)
        await self.postline.stop_engine()
        for kind in ("email.delivered", "email.bounced"):
            self.acked.update(await event_ids(self.database_url, kind))

    async def check(
        self,
        *,
        expectation: Expectation | None = None,
        received: Counter[str] | None = None,
        acked: Counter[str] | None = None,
        bound: int = 0,
        cleanup: bool = True,
    ) -> InvariantReport:
        return await check_invariants(
            database_url=self.database_url,
            expectation=expectation or self.expectation,
            received=received if received is not None else received_copies([self.fake_mx]),
            webhook_event_ids=acked if acked is not None else self.acked,
            spool=self.spool,
            in_flight_bound=bound,
            cleanup=cleanup,
            raise_on_violation=False,
        )


@pytest.fixture
async def run(postline_factory: Factory, fake_mx: FakeMX) -> Run:
    made = Run(await postline_factory(), fake_mx)
    await made.send()
    return made


def only(report: InvariantReport, fragment: str) -> None:
    assert len(report.violations) == 1, report.violations
    assert fragment in report.violations[0], report.violations


async def test_an_honest_run_passes_with_its_counts(run: Run) -> None:
    report = await run.check()
    assert report.violations == []
    assert (report.emails, report.delivered, report.bounced, report.received) == (3, 2, 1, 2)
    assert (report.duplicates, report.lost_emails, report.lost_events) == (0, 0, 0)
    assert report.spool_cleaned == 3 and report.orphan_spool_files == 0, report.summary()
    assert "lost=0 lost_events=0" in report.summary()


async def test_an_accepted_email_missing_from_the_store_is_lost(run: Run) -> None:
    expectation = Expectation(dict(run.expectation.accepted), dict(run.expectation.outcome))
    expectation.add("em_never_stored", ["c@dest.test"], "delivered")
    report = await run.check(expectation=expectation)
    only(report, "accepted emails missing from the store: em_never_stored")
    assert report.lost_emails == 1


async def test_delivered_but_never_received_is_lost(run: Run) -> None:
    received = received_copies([run.fake_mx])
    del received["a@dest.test"]
    report = await run.check(received=received)
    only(report, "delivered but never received: a@dest.test")
    assert report.lost_emails == 1


async def test_a_received_copy_of_a_bounced_recipient_is_reported(run: Run) -> None:
    received = received_copies([run.fake_mx]) + Counter({"gone@dest.test": 1})
    only(await run.check(received=received), "gone@dest.test x1 (store: bounced)")


async def test_duplicates_are_counted_and_bounded(run: Run) -> None:
    received = received_copies([run.fake_mx]) + Counter({"a@dest.test": 2})
    allowed = await run.check(received=received, bound=2)
    assert allowed.violations == [] and allowed.duplicates == 2
    only(await run.check(received=received, bound=1), "duplicate copies beyond what was in flight")


async def test_an_event_never_acknowledged_is_lost_and_an_invented_one_reported(run: Run) -> None:
    acked = Counter(run.acked)
    del acked[next(iter(acked))]
    report = await run.check(acked=acked)
    only(report, "terminal events never acknowledged")
    assert report.lost_events == 1
    only(await run.check(acked=run.acked + Counter({"evt_invented": 1})), "evt_invented")
    twice = await run.check(acked=run.acked + run.acked)
    assert twice.violations == [] and twice.webhook_duplicates == 3


async def test_an_unreferenced_body_left_in_the_spool_is_an_orphan(run: Run) -> None:
    stray = run.spool / "zz" / "em_stray00zz.eml"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"Subject: nobody's\r\n\r\n")
    only(await run.check(cleanup=False), "spool entries without a live reference")
    cleaned = await run.check()
    assert cleaned.violations == [] and not stray.exists()


async def test_a_temp_file_left_by_a_write_cut_short_is_cleaned(run: Run) -> None:
    """A SIGKILL between creating ``<ref>.tmp`` and renaming it leaves the temp file; its
    email was never committed (nothing was answered), so cleanup must remove it."""
    left = run.spool / "zz" / "em_cutshort0zz.tmp"
    left.parent.mkdir(parents=True, exist_ok=True)
    left.write_bytes(b"Subject: half writ")
    old = time.time() - 60
    os.utime(left, (old, old))
    report = await run.check()
    assert report.violations == [], report.violations
    assert report.spool_temp_files == 1 and not left.exists()


async def test_a_spare_file_still_holding_a_body_is_a_violation(run: Run) -> None:
    """Freed bodies' files are kept as spares for reuse, empty: content left in one is a
    delivered body still on disk."""
    services = run.postline.services
    assert await free_bodies(services.db, services.spool, utcnow(), 0) == 3
    spares = sorted((run.spool / SPARE_DIR).iterdir())
    assert len(spares) == 3 and all(p.stat().st_size == 0 for p in spares)
    assert (await run.check()).violations == []
    spares[0].write_bytes(b"Subject: still here\r\n\r\n")
    only(await run.check(), "spare files holding a deleted body's content")


async def test_bodies_freed_once_final_are_no_loss(run: Run) -> None:
    """Housekeeping frees a body once its email is final: nothing is left, nothing lost."""
    services = run.postline.services
    assert await free_bodies(services.db, services.spool, utcnow(), 0) == 3
    report = await run.check(cleanup=False)
    assert report.violations == [], report.violations
    assert report.spool_left == 0 and report.lost_emails == 0


async def test_a_body_missing_for_waiting_mail_is_a_loss(run: Run) -> None:
    waiting = await run.postline.send(to="later@dest.test")  # the engine is stopped: queued
    await run.postline.services.spool.delete(waiting["id"])
    expectation = run.expectation
    expectation.add(waiting["id"], ["later@dest.test"], "delivered")
    report = await run.check(expectation=expectation)
    assert any("bodies missing that waiting recipients need" in v for v in report.violations)
    assert report.lost_emails == 1
