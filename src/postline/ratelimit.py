"""Per-key rate limits: a token bucket per API key, shared by every process.

Each authenticated HTTP request, and each message submitted over SMTP, takes
one token from its key's bucket; an email send takes one per recipient (to, cc
and bcc of all its emails), so the limit counts the work asked for, not the
requests that carry it. A request needing more tokens than the burst could
never go through and is refused outright (``api.ratelimit``), not told to wait.
A bucket holds up to ``burst`` tokens and refills at ``rate`` per second; it
lives in the queue's backend (a table of the embedded queue's database, or a
Redis key), so API processes that share a queue share the budget instead of
each granting the whole of it.

When the backend does not answer, the request goes through unchecked (fail
open) and a warning is logged, at most once a minute. The limit protects the
service from a runaway client; it is no reason to refuse mail while Redis is
down, since accept itself keeps working then (housekeeping restores the jobs),
and when the database is down the request fails on its own, clearly.

Nothing here knows HTTP or SMTP: the API answers a refusal with 429 and
``Retry-After``, the submission server with ``smtp_refusal``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from postline.config import Settings
from postline.metrics import Metrics
from postline.model import EmailSource
from postline.queue import Queue

log = logging.getLogger("postline.ratelimit")

#: Least time between two warnings that the backend did not answer.
_WARN_EVERY = 60.0


@dataclass(frozen=True)
class Decision:
    """What the limit says about one request, in whole numbers fit for headers."""

    allowed: bool
    #: The burst: how many requests a full bucket allows at once.
    limit: int
    #: Requests the bucket allows right now, after this one.
    remaining: int
    #: Seconds until the bucket is full again.
    reset: int
    #: Seconds to wait before trying again: 0 when allowed, 1 or more when refused.
    retry_after: int


def bucket_of(key_id: str) -> str:
    """The bucket of an API key: one per key, whatever the door it came in by."""
    return f"key:{key_id}"


def describe(rate: float, burst: int) -> str:
    """The limit in words, for problem details and SMTP replies."""
    per_second = f"{rate:g} request{'s' if rate != 1 else ''} per second"
    return f"{per_second} with bursts of up to {burst}"


def smtp_refusal(decision: Decision) -> str:
    """The SMTP reply refusing a message over the limit (at MAIL FROM, or after DATA
    for the recipients' tokens).

    ``451 4.7.1``: a temporary refusal of this transaction only (RFC 3463 4.7.1,
    delivery not authorized for now), so the client keeps its session and its
    message and tries again after the hint. Not ``421``, which closes the
    connection (RFC 5321 4.2.3) and invites a reconnect storm, nor a 5xx, since
    waiting is all it takes.
    """
    return f"451 4.7.1 Rate limit exceeded for this API key; try again in {decision.retry_after} s"


class RateLimiter:
    """Takes tokens for API keys from the queue backend's buckets."""

    def __init__(
        self, queue: Queue, rate: float, burst: int, metrics: Metrics | None = None
    ) -> None:
        self.queue = queue
        self.rate = rate
        self.burst = burst
        self.metrics = metrics
        self._warned_at = -math.inf
        self._unchecked = 0

    @classmethod
    def from_settings(
        cls, settings: Settings, queue: Queue, metrics: Metrics | None = None
    ) -> RateLimiter:
        return cls(queue, settings.rate_limit_per_second, settings.rate_limit_burst, metrics)

    @property
    def enabled(self) -> bool:
        return self.rate > 0 and self.burst > 0

    def describe(self) -> str:
        return describe(self.rate, self.burst)

    async def check(
        self, key_id: str, source: EmailSource = EmailSource.API, count: int = 1
    ) -> Decision | None:
        """Take ``count`` tokens (1 to the burst) for ``key_id``; None when limits are off
        or the backend failed."""
        if not self.enabled:
            return None
        try:
            tokens = await self.queue.take_token(bucket_of(key_id), self.rate, self.burst, count)
        except Exception as exc:
            self._let_through(exc)
            return None
        remaining = max(0, math.floor(tokens.remaining))
        decision = Decision(
            allowed=tokens.allowed,
            limit=self.burst,
            remaining=remaining,
            reset=math.ceil((self.burst - tokens.remaining) / self.rate),
            retry_after=0 if tokens.allowed else max(1, math.ceil(tokens.wait)),
        )
        if not tokens.allowed and self.metrics is not None:
            self.metrics.rate_limited.labels(source=source).inc()
        return decision

    def _let_through(self, exc: Exception) -> None:
        """Fail open, and say so without flooding the log."""
        self._unchecked += 1
        if self.metrics is not None:
            self.metrics.rate_limit_unchecked.inc()
        now = time.monotonic()
        if now - self._warned_at < _WARN_EVERY:
            return
        self._warned_at = now
        log.warning(
            "rate limits not checked: the queue backend did not answer (%s); "
            "%d requests let through unchecked so far",
            type(exc).__name__,
            self._unchecked,
        )
