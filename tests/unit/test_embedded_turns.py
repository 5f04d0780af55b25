"""The embedded queue's view of whose turn it is (queue/embedded.py ``_Turns``), on its own.

A lease takes the destinations it picks out of the view until it settles; mutation
testing showed that nothing checked what a failed lease gives back (``restore``):
only the order of later leases shows it, never whether a job can be leased.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from postline.queue.embedded import _Turns

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
