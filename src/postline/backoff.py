"""Waiting out a database or queue that went away, without a crash loop or a log flood.

Workers poll in loops; when PostgreSQL or Redis stops answering, each loop
keeps its process alive, waits longer after every failure (up to a cap) and
logs the outage once with its cause, then once more when it is over. Jobs
are never dropped: what was leased stays leased until its lease expires.
"""

from __future__ import annotations

import logging
import random

log = logging.getLogger("postline")


class Backoff:
    def __init__(self, what: str, *, first: float = 0.5, cap: float = 30.0) -> None:
        self.what = what
        self.first = first
        self.cap = cap
        self.failures = 0

    def failed(self, exc: BaseException) -> float:
        """Record a failure; return how long to wait before trying again."""
        self.failures += 1
        if self.failures == 1:
            log.warning("%s failed, retrying with backoff: %s", self.what, _reason(exc))
        else:
            log.debug("%s failed again (%d): %s", self.what, self.failures, _reason(exc))
        delay: float = min(self.cap, self.first * 2.0 ** (self.failures - 1))
        return delay * random.uniform(0.8, 1.2)

    def succeeded(self) -> None:
        if self.failures:
            log.warning("%s works again after %d failed tries", self.what, self.failures)
        self.failures = 0


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (the driver's own, under SQLAlchemy's wrapper)."""
    text = str(getattr(exc, "orig", None) or exc).splitlines()
    return (text[0] if text and text[0] else type(exc).__name__)[:200]


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {first_line(exc)}"
