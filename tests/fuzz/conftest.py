"""Print the fuzz run's seed (tests/fuzz/replay.py) at the start and in the summary."""

from __future__ import annotations

import pytest

from tests.fuzz.replay import replay_hint


def pytest_report_header() -> str:
    return replay_hint()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    terminalreporter.write_line(replay_hint())
