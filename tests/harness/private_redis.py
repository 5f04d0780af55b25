"""A redis-server of one test's own, for tests that stop, kill or restart Redis: the shared
test Redis (``redis_url`` in tests/conftest.py) must stay up for every other test.

Import the fixture into the test module that wants it
(``from tests.harness.private_redis import private_redis``).
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from tests.acceptance.harness import RedisServer
from tests.harness.capability import missing

__all__ = ["private_redis"]


@pytest_asyncio.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A diskless redis-server of this test's own, started: restarted on its port it comes
    back empty. Killed after the test, whatever it did; without a ``redis-server`` binary
    the test is skipped (failed in CI)."""
    binary = shutil.which("redis-server")
    if binary is None:
        missing("redis-server", "no redis-server binary on PATH")
    server = RedisServer(tmp_path / "redis", binary=binary)
    try:
        await server.start()
        yield server
    finally:
        await server.aclose()
