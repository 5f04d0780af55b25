"""The embedded queue's view of whose turn it is (queue/embedded.py ``_Turns``), on its own.

A lease takes the destinations it picks out of the view until it settles; mutation
testing showed that nothing checked what a failed lease gives back (``restore``), nor
which destination a released job gives back (``EmbeddedQueue.release``): only the
order of later leases shows either, never whether a job can be leased. The release
test runs the queue on a SQLite file of its own, to have a job to release.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from postline.config import normalize_database_url
from postline.ids import new_id
from postline.queue import Job
from postline.queue.embedded import _Turns
from postline.store.types import utcnow
from tests.harness.stores import embedded_queue

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _view(*destinations: str) -> _Turns:
    turns = _Turns()
    turns.read(
        [(d, NOW - timedelta(minutes=len(destinations) - i)) for i, d in enumerate(destinations)],
        last=True,
    )
    return turns


def test_a_pick_takes_the_destinations_out_of_the_view_until_settled() -> None:
    turns = _view("a.test", "b.test")
    assert turns.pick(NOW, 1) == ["a.test"]
    assert turns.pick(NOW, 2) == ["b.test"]


def test_a_failed_lease_gives_its_destinations_their_turns_back() -> None:
    turns = _view("a.test", "b.test", "c.test")
    picked = turns.pick(NOW, 2)
    assert picked == ["a.test", "b.test"]
    turns.restore(picked)
    assert turns.pick(NOW, 3) == ["a.test", "b.test", "c.test"]


async def test_a_released_job_gives_its_destination_back_to_the_view(tmp_path: Path) -> None:
    url = normalize_database_url(f"sqlite:///{tmp_path}/postline.db")
    async with embedded_queue(url) as queue:
        job = Job(
            id=new_id("job_"),
            email_id=new_id("em_"),
            destination="a.test",
            recipient_ids=[new_id("rcp_")],
            body_ref="body",
            due_at=utcnow(),
        )
        await queue.enqueue([job])
        # Two asked of a.test, one given: nothing more of it is due, it leaves the view.
        [leased] = await queue.lease("worker-1", 2, 60)
        assert queue._turns.pick(utcnow(), 2) == []
        assert await queue.release(leased)
        assert queue._turns.pick(utcnow(), 2) == ["a.test"]
