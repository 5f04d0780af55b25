"""Traffic shaping: connection budgets, messages per minute, MX roll-up."""

from __future__ import annotations

import asyncio

from postline.delivery.shaping import Limits, Shaper, parse_limits, provider


def test_mx_roll_up_keys_by_provider() -> None:
    assert provider("aspmx.l.google.com") == "google.com"
    assert provider("alt1.aspmx.l.google.com.") == "google.com"
    assert provider("127.0.0.1") == "127.0.0.1"
    shaper = Shaper(Limits(), {"special.test": Limits(connections=2)})
    assert shaper.key("customer-a.test", "aspmx.l.google.com") == "google.com"
    assert shaper.key("customer-b.test", "alt2.aspmx.l.google.com") == "google.com"
    assert shaper.key("Special.test", "mx.elsewhere.test") == "special.test"
    assert shaper.key("relay.test", None) == "relay.test"


async def test_connection_budget_is_never_exceeded() -> None:
    shaper = Shaper(Limits(connections=3))
    peak = 0

    async def deliver() -> None:
        nonlocal peak
        async with shaper.slot("google.com"):
            peak = max(peak, shaper.in_use["google.com"])
            await asyncio.sleep(0)

    await asyncio.gather(*(deliver() for _ in range(20)))
    assert peak == 3


async def test_messages_per_minute_are_paced() -> None:
    now = 0.0
    slept: list[float] = []

    def clock() -> float:
        return now

    async def sleep(seconds: float) -> None:
        nonlocal now
        slept.append(seconds)
        now += seconds

    shaper = Shaper(Limits(per_minute=60), clock=clock, sleep=sleep)  # one a second
    for _ in range(8):
        async with shaper.slot("slow.test"):
            pass
    # A burst of five seconds' worth goes at once, then one per second.
    assert len(slept) == 3
    assert abs(now - 3.0) < 1e-6


async def test_more_messages_in_one_slot_pay_a_turn_each() -> None:
    now = 0.0

    def clock() -> float:
        return now

    async def sleep(seconds: float) -> None:
        nonlocal now
        now += seconds

    shaper = Shaper(Limits(per_minute=60), clock=clock, sleep=sleep)  # one a second
    async with shaper.slot("slow.test"):
        for _ in range(7):  # a tracked email's further copies, on the slot's connection
            await shaper.pace("slow.test")
    # Eight messages, as eight slots of one each: a burst of five, then one per second.
    assert abs(now - 3.0) < 1e-6


def test_parse_limits() -> None:
    assert parse_limits({"gmail.com": {"connections": 5, "per_minute": 600}}) == {
        "gmail.com": Limits(connections=5, per_minute=600)
    }
