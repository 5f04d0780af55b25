"""Pytest fixtures for the harness. Load with ``pytest_plugins = ["tests.harness.fixtures"]``
in the top-level ``tests/conftest.py``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from tests.harness.fake_dns import FakeDNS
from tests.harness.fake_mx import FakeMX, FakeMXFactory
from tests.harness.receiver import WebhookReceiver

__all__ = ["fake_dns", "fake_mx", "fake_mx_factory", "receiver"]


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    """A webhook receiver (tests/harness/receiver.py) on loopback, stopped after the test."""
    async with WebhookReceiver() as hooks:
        yield hooks


@pytest_asyncio.fixture
async def fake_mx() -> AsyncIterator[FakeMX]:
    """A FakeMX on 127.0.0.1, random port, in the test's event loop."""
    async with FakeMX() as mx:
        yield mx


@pytest_asyncio.fixture
async def fake_mx_factory() -> AsyncIterator[FakeMXFactory]:
    """``await fake_mx_factory("127.0.0.2")`` or ``await fake_mx_factory.group("127.0.0.2",
    "127.0.0.3")`` (same port on each); everything is stopped after the test."""
    factory = FakeMXFactory()
    try:
        yield factory
    finally:
        await factory.aclose()


@pytest.fixture
def fake_dns() -> Iterator[FakeDNS]:
    """A FakeDNS (UDP+TCP) on 127.0.0.1, random port; ``fake_dns.nameserver`` -> "127.0.0.1:P"."""
    dns = FakeDNS()
    dns.start()
    try:
        yield dns
    finally:
        dns.stop()
