"""What a test does when something it needs is missing: skip on a laptop, fail in CI.

A service (PostgreSQL, Redis, a redis-server binary), a privilege (mounting a
small filesystem to fill), an address family: on a developer's machine the
test skips and says why, so the rest of the suite stays useful. Under ``CI``
the same absence fails the run, so that no test can stop running there
without anyone noticing. Every such test goes through :func:`missing`.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

__all__ = ["missing"]


def missing(capability: str, reason: str) -> NoReturn:
    """``capability`` is not available (``reason``): skip, or fail under ``CI``."""
    message = f"{capability} is not available ({reason})"
    if os.environ.get("CI"):
        pytest.fail(f"{message}: CI must provide it", pytrace=False)
    pytest.skip(message)
