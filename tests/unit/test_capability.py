"""``missing``: what a test that lacks a service or privilege does, on a laptop and in CI."""

from __future__ import annotations

import pytest

from tests.harness.capability import missing


def test_outside_ci_a_missing_capability_skips_and_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"mount is not available \(refused\)"):
        missing("mount", "refused")


def test_in_ci_a_missing_capability_fails_the_test(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must provide it"):
        missing("mount", "refused")
