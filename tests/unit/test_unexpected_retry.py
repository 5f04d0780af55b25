"""The backoff of a job whose delivery raised: doubling from 10 s, capped, with jitter."""

from __future__ import annotations

from postline.delivery.engine import unexpected_retry_delay

DEFAULT_SCHEDULE = [60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 21600.0]


def test_doubles_from_ten_seconds_within_jitter() -> None:
    for attempt, expected in enumerate([10.0, 20.0, 40.0, 80.0, 160.0]):
        for _ in range(50):
            delay = unexpected_retry_delay(DEFAULT_SCHEDULE, attempt)
            assert 0.9 * expected <= delay <= 1.1 * expected


def test_is_capped_and_never_overflows() -> None:
    for attempt in (8, 20, 64, 10_000):
        delay = unexpected_retry_delay(DEFAULT_SCHEDULE, attempt)
        assert 0.9 * 1800 <= delay <= 1.1 * 1800


def test_jitter_spreads_retries() -> None:
    assert len({unexpected_retry_delay(DEFAULT_SCHEDULE, 3) for _ in range(20)}) > 1


def test_a_short_schedule_bounds_the_first_wait_and_the_cap() -> None:
    """Nothing waits longer than the configured retry schedule would (tests use 0.2 s)."""
    assert 0.18 <= unexpected_retry_delay([0.2], 0) <= 0.22
    assert 0.18 <= unexpected_retry_delay([0.2], 5) <= 0.22
    assert 4.5 <= unexpected_retry_delay([0.2, 5.0], 10) <= 5.5
