"""A clock a test moves: the real time plus an offset, for the parts that take a clock."""

from __future__ import annotations

from datetime import datetime, timedelta

from postline.store.types import utcnow


class MovableClock:
    """Passed at construction (``postline_factory(clock=...)``, ``Breakers(policy, clock)``);
    the test then moves ``offset`` to make days pass without waiting for them."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return utcnow() + self.offset
