"""Waiting for asynchronous work without sleeping a guessed time: ask, and ask again until a
deadline, so a fast machine finishes early and a slow one fails with what it waited for."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["poll"]


async def poll(
    check: Callable[[], Awaitable[Any]], *, timeout: float, what: str, interval: float = 0.05
) -> Any:
    """Call ``check`` until it returns something truthy, and return that; fail after
    ``timeout`` seconds with an assertion that names ``what`` was awaited."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(interval)
