"""Which event loop a ``postline`` process runs on (``POSTLINE_EVENT_LOOP``).

The subprocess tests (acceptance, crash, SDK) run ``postline`` at the default, uvloop;
the in-process tests run on pytest's asyncio loop: both loops carry the whole product.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import uvloop

from postline.cli import event_loop_factory
from postline.config import Settings


def settings(tmp_path: Path, event_loop: str = "uvloop") -> Settings:
    return Settings(data_dir=str(tmp_path), event_loop=event_loop)


def test_uvloop_by_default(tmp_path: Path) -> None:
    factory = event_loop_factory(settings(tmp_path))
    assert factory is not None
    loop = factory()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


def test_asyncio_when_asked(tmp_path: Path) -> None:
    assert event_loop_factory(settings(tmp_path, event_loop="asyncio")) is None
    with asyncio.Runner(loop_factory=None) as runner:
        assert not isinstance(runner.get_loop(), uvloop.Loop)
