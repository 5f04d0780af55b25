"""The Retry-After of a webhook endpoint's 429 or 503, as seconds to wait (RFC 9110 10.2.3).

The dispatch test sees a retry wait for it in real time, in two forms; these read every
form and bound here, on the answer httpx builds. (Mutation testing: no test sent an
answer without the field, a date in the past, a date without a zone or a wait past the cap.)
"""

from __future__ import annotations

from datetime import timedelta
from email.utils import format_datetime

import httpx
import pytest

from postline.events.dispatcher import MAX_RETRY_AFTER, _retry_after
from postline.store.types import utcnow


def _answer(status: int, retry_after: str | None) -> httpx.Response:
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    return httpx.Response(status, headers=headers)


@pytest.mark.parametrize("status", [429, 503])
def test_seconds_are_read_on_a_429_or_a_503(status: int) -> None:
    assert _retry_after(_answer(status, " 120 ")) == 120.0


@pytest.mark.parametrize("status", [200, 410, 428, 430, 500, 502, 504])
def test_any_other_answer_has_no_wait_of_its_own(status: int) -> None:
    """The retry schedule alone decides when to try again after any other answer."""
    assert _retry_after(_answer(status, "120")) is None


@pytest.mark.parametrize("value", [None, "", "soon", "-5", "1.5"])
def test_a_missing_or_unreadable_field_has_no_wait(value: str | None) -> None:
    assert _retry_after(_answer(503, value)) is None


def test_a_wait_is_never_longer_than_a_day() -> None:
    assert MAX_RETRY_AFTER == 24 * 3600
    assert _retry_after(_answer(429, str(10 * 24 * 3600))) == MAX_RETRY_AFTER
    a_week_ahead = format_datetime(utcnow() + timedelta(days=7), usegmt=True)
    assert _retry_after(_answer(503, a_week_ahead)) == MAX_RETRY_AFTER


@pytest.mark.parametrize("zone", ["GMT", "-0000"])
def test_a_date_is_the_time_left_until_it(zone: str) -> None:
    """A date in GMT, or one that names no zone ("-0000": read as UTC), an hour ahead:
    about an hour, less the moments between building the answer and reading it."""
    ahead = utcnow() + timedelta(hours=1)
    value = format_datetime(ahead, usegmt=True)
    if zone == "-0000":
        value = format_datetime(ahead.replace(tzinfo=None))
        assert value.endswith("-0000")
    wait = _retry_after(_answer(503, value))
    assert wait is not None
    assert 3600 - 60 < wait <= 3600


def test_a_date_gone_by_is_no_wait_at_all() -> None:
    """Not a negative wait, and not a second either: the schedule's own delay applies."""
    gone_by = format_datetime(utcnow() - timedelta(minutes=5), usegmt=True)
    assert _retry_after(_answer(429, gone_by)) == 0.0
