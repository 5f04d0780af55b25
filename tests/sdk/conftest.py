"""The SDK tests run a real ``postline serve`` (the acceptance suite's fixtures)."""

from __future__ import annotations

from tests.acceptance.conftest import install, launch

__all__ = ["install", "launch"]
