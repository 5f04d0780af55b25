"""Resend's natural-language ``scheduled_at`` forms (postline.when)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from postline.when import FORMS, NotUnderstood, parse_natural

# A Wednesday, mid-morning UTC.
NOW = datetime(2026, 12, 2, 10, 15, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "offset"),
    [
        ("in 1 min", timedelta(minutes=1)),
        ("in 5 mins", timedelta(minutes=5)),
        ("in 1 minute", timedelta(minutes=1)),
        ("in 10 minutes", timedelta(minutes=10)),
        ("in 1 hour", timedelta(hours=1)),
        ("in an hour", timedelta(hours=1)),
        ("in 3 hours", timedelta(hours=3)),
        ("in 2 hrs", timedelta(hours=2)),
        ("in 1 day", timedelta(days=1)),
        ("in 2 days", timedelta(days=2)),
        ("in 1 week", timedelta(weeks=1)),
        ("in 30 seconds", timedelta(seconds=30)),
        ("in 15min", timedelta(minutes=15)),
        ("  In   2   Hours ", timedelta(hours=2)),
        ("in 1 hour UTC", timedelta(hours=1)),
    ],
)
def test_offsets_count_from_now(text: str, offset: timedelta) -> None:
    assert parse_natural(text, NOW) == NOW + offset


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("today at 5pm", datetime(2026, 12, 2, 17, 0, tzinfo=UTC)),
        ("today at 9am", datetime(2026, 12, 2, 9, 0, tzinfo=UTC)),  # past: sent at once
        ("tomorrow at 9am", datetime(2026, 12, 3, 9, 0, tzinfo=UTC)),
        ("tomorrow at 9 am", datetime(2026, 12, 3, 9, 0, tzinfo=UTC)),
        ("tomorrow at 9:30 pm", datetime(2026, 12, 3, 21, 30, tzinfo=UTC)),
        ("Tomorrow at 9:30PM", datetime(2026, 12, 3, 21, 30, tzinfo=UTC)),
        ("tomorrow at 12am", datetime(2026, 12, 3, 0, 0, tzinfo=UTC)),
        ("tomorrow at 12pm", datetime(2026, 12, 3, 12, 0, tzinfo=UTC)),
        ("tomorrow at 17:45", datetime(2026, 12, 3, 17, 45, tzinfo=UTC)),
        ("tomorrow at noon", datetime(2026, 12, 3, 12, 0, tzinfo=UTC)),
        ("tomorrow at midnight", datetime(2026, 12, 3, 0, 0, tzinfo=UTC)),
        ("next monday at 10am", datetime(2026, 12, 7, 10, 0, tzinfo=UTC)),
        ("friday at 3pm", datetime(2026, 12, 4, 15, 0, tzinfo=UTC)),
        # The weekday of today: still today while the time is ahead, else a week on.
        ("wednesday at 11am", datetime(2026, 12, 2, 11, 0, tzinfo=UTC)),
        ("wednesday at 10am", datetime(2026, 12, 9, 10, 0, tzinfo=UTC)),
        ("next wednesday at 11am", datetime(2026, 12, 9, 11, 0, tzinfo=UTC)),
        ("tomorrow at 9am utc", datetime(2026, 12, 3, 9, 0, tzinfo=UTC)),
    ],
)
def test_days_and_clock_times_are_utc(text: str, expected: datetime) -> None:
    assert parse_natural(text, NOW) == expected


def test_now_in_another_zone_is_read_in_utc() -> None:
    # 23:30 at UTC-5 is 04:30 the next day in UTC: "tomorrow" is the UTC tomorrow.
    late = datetime(2026, 12, 2, 23, 30, tzinfo=timezone(timedelta(hours=-5)))
    assert parse_natural("tomorrow at 9am", late) == datetime(2026, 12, 4, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "soon",
        "tomorrow",
        "in 1 fortnight",
        "in -1 hour",
        "in 1.5 hours",
        "in 99999999 minutes",
        "in hour",
        "tomorrow at 25:00",
        "tomorrow at 13pm",
        "tomorrow at 0am",
        "tomorrow at 9",
        "tomorrow at 9:60",
        "yesterday at 9am",
        "next month at 9am",
        "friday at 3pm ET",
        "2026-12-03 09:00",
    ],
)
def test_anything_else_is_refused_naming_the_forms(text: str) -> None:
    with pytest.raises(NotUnderstood) as refused:
        parse_natural(text, NOW)
    assert repr(text) in str(refused.value)
    assert FORMS in str(refused.value)
