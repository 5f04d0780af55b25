"""Shared fixtures: real PostgreSQL databases, the fake MX and DNS, Postline in-process."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from tests.harness.capability import missing
from tests.harness.fixtures import fake_dns, fake_mx, fake_mx_factory, receiver
from tests.harness.forkserver import forget_inherited_forkserver
from tests.harness.logging_capture import production_logging
from tests.harness.postline import PostlineUnderTest, postline_factory

__all__ = [
    "fake_dns",
    "fake_mx",
    "fake_mx_factory",
    "postline_factory",
    "production_logging",
    "receiver",
]

PG_ADMIN_DSN = os.environ.get("POSTLINE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("POSTLINE_TEST_REDIS", "redis://127.0.0.1:6379/0")


def pytest_sessionstart(session: pytest.Session) -> None:
    """A run in a forked process (mutmut's, per mutant) starts its own forkserver."""
    forget_inherited_forkserver()


@pytest_asyncio.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database for this test, dropped afterwards."""
    name = f"postline_test_{secrets.token_hex(6)}"
    try:
        admin = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        missing("PostgreSQL", str(exc))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base = PG_ADMIN_DSN.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    admin = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest_asyncio.fixture
async def redis_url() -> str:
    """The test Redis (shared: give each test its own key prefix, see ``redis_prefix``)."""
    client = aioredis.Redis.from_url(
        REDIS_URL, socket_connect_timeout=2, socket_timeout=2, retry=None
    )
    try:
        await client.ping()
    except (OSError, aioredis.RedisError) as exc:
        missing("Redis", f"{REDIS_URL}: {exc}")
    finally:
        await client.aclose()
    return REDIS_URL


@pytest_asyncio.fixture
async def redis_prefix(redis_url: str) -> AsyncIterator[str]:
    """A fresh key prefix on the test Redis; every key under it is deleted afterwards."""
    prefix = f"postline_test_{secrets.token_hex(6)}"
    yield prefix
    client = aioredis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=5)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=500)]
        for start in range(0, len(keys), 500):
            await client.delete(*keys[start : start + 500])
    finally:
        await client.aclose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_backend(request: pytest.FixtureRequest) -> str:
    """Parametrize a test over both stores: use with the ``database_url`` fixture."""
    return str(request.param)


@pytest.fixture
def database_url(store_backend: str, tmp_path: object, request: pytest.FixtureRequest) -> str:
    """A fresh database URL of each backend (operator form: sqlite:/// or postgresql://)."""
    if store_backend == "sqlite":
        return f"sqlite:///{tmp_path}/postline.db"
    return str(request.getfixturevalue("postgres_url"))


@pytest_asyncio.fixture
async def postline(postline_factory: object) -> AsyncIterator[PostlineUnderTest]:
    """Postline on SQLite with its engine running, a domain example.test and an admin key."""
    assert callable(postline_factory)
    yield await postline_factory()
