"""Logging as ``postline serve`` sets it up, captured by pytest, for tests of what is logged."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from postline.cli import setup_logging


@pytest.fixture
def production_logging(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Capture at INFO with the levels ``postline serve`` sets (it quiets aiosmtpd's
    ``mail.log``, which would otherwise log every envelope, uvicorn's error log and httpx's
    per-request line); every logger's level and the root handlers are put back afterwards."""
    manager = logging.root.manager
    saved = {
        name: (logger.level, logger.propagate, list(logger.handlers))
        for name, logger in manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }
    handlers = list(logging.root.handlers)
    caplog.set_level(logging.INFO)
    setup_logging("INFO")
    try:
        yield caplog
    finally:
        logging.root.handlers[:] = handlers
        for name, logger in manager.loggerDict.items():
            if isinstance(logger, logging.Logger):
                level, propagate, attached = saved.get(name, (logging.NOTSET, True, []))
                logger.setLevel(level)
                logger.propagate = propagate
                logger.handlers[:] = attached
