"""Resend's natural-language times for ``scheduled_at``: "in 10 min", "tomorrow at 9am".

Code written for Resend sends these strings as they are, so Postline reads them too
rather than making every caller translate. The forms are few and fixed (no guessing):

- ``in N <unit>``: ``N`` a whole number, ``a`` or ``an``; the unit ``sec``/``second``,
  ``min``/``minute``, ``hour``/``hr``, ``day`` or ``week``, singular or plural;
- ``<day> at <time>``, ``<day>`` being ``today``, ``tomorrow``, a weekday (its next
  occurrence, today included while the time is ahead) or ``next <weekday>`` (a day
  after today); ``<time>`` is ``9am``, ``9 pm``, ``9:30pm``, ``17:00``, ``noon`` or
  ``midnight``.

Every time is UTC: the server cannot know the caller's zone, and a trailing ``UTC``
(or ``GMT``) is allowed to say so. Anything else is refused with :data:`FORMS` in the
message, never read as something close.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta

#: What a refusal tells the caller it may write instead.
FORMS = (
    "an ISO 8601 date-time with a time zone such as 2025-01-31T12:00:00Z, or (UTC) "
    "'in 10 min', 'in 2 hours', 'in 1 day', 'today at 5pm', 'tomorrow at 9:30 am', "
    "'friday at 17:00' or 'next monday at 10am'"
)

_UNITS = {
    "s": timedelta(seconds=1),
    "sec": timedelta(seconds=1),
    "second": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "min": timedelta(minutes=1),
    "minute": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "hr": timedelta(hours=1),
    "hour": timedelta(hours=1),
    "d": timedelta(days=1),
    "day": timedelta(days=1),
    "w": timedelta(weeks=1),
    "week": timedelta(weeks=1),
}
_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")

#: Most units an offset may name: a year of minutes is plenty, and the bound keeps
#: ``timedelta`` and ``datetime`` arithmetic from overflowing on a number with 40 digits.
_MOST = 1_000_000

_RELATIVE = re.compile(r"in (?P<count>\d{1,7}|an?) ?(?P<unit>[a-z]+)")
_AT = re.compile(r"(?P<day>today|tomorrow|(?:next )?[a-z]+) at (?P<time>.+)")
_CLOCK = re.compile(r"(?P<hour>\d{1,2})(?::(?P<minute>\d{2}))? ?(?P<half>am|pm)?")


class NotUnderstood(ValueError):
    """The text is none of the forms: the message names them."""

    def __init__(self, text: str) -> None:
        super().__init__(f"{text!r} is not a time Postline reads; use {FORMS}")


def parse_natural(text: str, now: datetime) -> datetime:
    """The UTC moment ``text`` names, seen from ``now`` (aware); :class:`NotUnderstood`
    if it is not one of the forms of the module docstring."""
    said = " ".join(text.lower().split()).removesuffix(" utc").removesuffix(" gmt")
    now = now.astimezone(UTC)
    if relative := _RELATIVE.fullmatch(said):
        step = _unit(relative["unit"])
        count = relative["count"]
        amount = 1 if count in ("a", "an") else int(count)
        if step is None or amount > _MOST:
            raise NotUnderstood(text)
        return now + amount * step
    if at := _AT.fullmatch(said):
        clock = _clock(at["time"])
        day = _day(at["day"], now, clock)
        if clock is None or day is None:
            raise NotUnderstood(text)
        return datetime.combine(day, clock, tzinfo=UTC)
    raise NotUnderstood(text)


def _unit(word: str) -> timedelta | None:
    singular = word[:-1] if word.endswith("s") and word[:-1] in _UNITS else word
    return _UNITS.get(singular)


def _clock(said: str) -> time | None:
    """``9am``, ``9:30 pm``, ``17:00``, ``noon``, ``midnight``; None for anything else."""
    if said == "noon":
        return time(12, 0)
    if said == "midnight":
        return time(0, 0)
    match = _CLOCK.fullmatch(said)
    if match is None:
        return None
    hour, minute, half = int(match["hour"]), int(match["minute"] or 0), match["half"]
    if minute > 59:
        return None
    if half is None:
        # A bare "9" is not a time; "9:00" and "17:00" are.
        return time(hour, minute) if match["minute"] is not None and hour <= 23 else None
    if not 1 <= hour <= 12:
        return None
    return time(hour % 12 + (12 if half == "pm" else 0), minute)


def _day(said: str, now: datetime, clock: time | None) -> date | None:
    """The date ``said`` names, or None."""
    today = now.date()
    if said == "today":
        return today
    if said == "tomorrow":
        return today + timedelta(days=1)
    following = said.startswith("next ")
    name = said.removeprefix("next ")
    if name not in _WEEKDAYS:
        return None
    ahead = (_WEEKDAYS.index(name) - now.weekday()) % 7
    if ahead == 0 and (following or clock is None or clock <= now.time()):
        ahead = 7  # "next monday" on a Monday, or today's time has passed: a week on
    return today + timedelta(days=ahead)
