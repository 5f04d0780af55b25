"""The dashboard's CSRF check says no to anything but the session's token, never raises."""

from __future__ import annotations

from postline.dashboard.session import csrf_ok


def test_only_the_sessions_token_passes() -> None:
    assert csrf_ok("a1b2c3", "a1b2c3")
    for presented in (None, "", "a1b2c4", "a1b2c3 ", "\u00e9\u00e9", "a1b2c\u00e9"):
        assert not csrf_ok("a1b2c3", presented), presented
