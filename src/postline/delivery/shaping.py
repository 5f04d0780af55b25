"""Traffic shaping per destination: parallel connections and messages per minute.

Receivers throttle senders who open too many connections or send too fast,
so each destination gets a budget. Domains whose MX hosts belong to one
provider (every Google Workspace domain points at google.com's MX) share one
budget: the "MX roll-up", keyed by the provider's domain.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from postline.netpolicy import is_address


@dataclass(frozen=True)
class Limits:
    connections: int = 20  # Postfix's default_destination_concurrency_limit
    per_minute: int = 0  # 0: no rate limit


def provider(mx_host: str) -> str:
    """The registrable-looking tail of an MX host name: mx1.mail.example.com -> example.com."""
    if is_address(mx_host):
        return mx_host
    labels = mx_host.lower().rstrip(".").split(".")
    return ".".join(labels[-2:])


class _Bucket:
    def __init__(self, per_minute: int, clock: Callable[[], float]) -> None:
        self.rate = per_minute / 60.0
        self.capacity = float(per_minute) / 60.0 * 5 or 1.0  # a burst of five seconds' worth
        self.tokens = self.capacity
        self.clock = clock
        self.stamp = clock()

    def wait_time(self) -> float:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class Shaper:
    def __init__(
        self,
        default: Limits,
        overrides: dict[str, Limits] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.default = default
        self.overrides = {k.lower(): v for k, v in (overrides or {}).items()}
        self.clock = clock
        self.sleep = sleep
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._buckets: dict[str, _Bucket] = {}
        self.in_use: dict[str, int] = {}

    def key(self, destination: str, mx_host: str | None) -> str:
        """The budget a delivery draws from: the domain's own override, else its MX provider."""
        if destination.lower() in self.overrides or mx_host is None:
            return destination.lower()
        return provider(mx_host)

    def limits(self, key: str) -> Limits:
        return self.overrides.get(key, self.default)

    @contextlib.asynccontextmanager
    async def slot(self, key: str) -> AsyncIterator[None]:
        limits = self.limits(key)
        semaphore = self._slots.setdefault(key, asyncio.Semaphore(limits.connections))
        async with semaphore:
            await self.pace(key)
            self.in_use[key] = self.in_use.get(key, 0) + 1
            try:
                yield
            finally:
                self.in_use[key] -= 1

    async def pace(self, key: str) -> None:
        """Wait for a message's turn in ``key``'s per-minute budget.

        A slot takes one turn for its first message; a delivery that sends more
        messages in its slot (a tracked email's copy per recipient) takes one more
        for each, so the budget counts messages, not slots.
        """
        limits = self.limits(key)
        if limits.per_minute > 0:
            bucket = self._buckets.setdefault(key, _Bucket(limits.per_minute, self.clock))
            while (delay := bucket.wait_time()) > 0:
                await self.sleep(delay)


def parse_limits(value: dict[str, dict[str, int]]) -> dict[str, Limits]:
    """``{"gmail.com": {"connections": 10, "per_minute": 600}}`` -> Limits per key."""
    return {key: Limits(**limits) for key, limits in value.items()}
