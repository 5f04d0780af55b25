"""Fixtures for the acceptance tests: fresh installs and ``postline serve`` processes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.acceptance.harness import Install, Server


class Launcher:
    """Starts ``postline serve`` processes and kills whatever is left at teardown."""

    def __init__(self) -> None:
        self.servers: list[Server] = []

    async def __call__(self, install: Install, *args: str, **env: str) -> Server:
        server = await Server.start(install, *args, **env)
        self.servers.append(server)
        return server

    async def aclose(self) -> None:
        servers, self.servers = self.servers, []
        for server in servers:
            await server.aclose()


@pytest.fixture
def install(tmp_path: Path) -> Install:
    """A fresh install: an empty data dir (not yet created) and free loopback ports."""
    return Install(tmp_path / "data")


@pytest_asyncio.fixture
async def launch() -> AsyncIterator[Launcher]:
    launcher = Launcher()
    try:
        yield launcher
    finally:
        await launcher.aclose()
