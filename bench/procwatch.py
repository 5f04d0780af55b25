"""CPU seconds and peak RSS of process trees, read from /proc while a benchmark runs.

A process that exits takes its counters with it, so the trees are sampled every
``interval`` seconds and each process keeps its last reading: a child that lived
less than one interval is missed (Postfix's and Postline's workers live for the
whole run). Peak RSS is the kernel's high-water mark (``VmHWM``), not a sample.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Reading:
    ppid: int
    name: str
    cpu_seconds: float
    peak_rss_kb: int


@dataclass(frozen=True)
class Usage:
    """One line of the report: the processes of one name under one started process."""

    label: str
    processes: int
    cpu_seconds: float
    peak_rss_kb: int  # the largest of them


def read(pid: int) -> Reading | None:
    """/proc/PID's parent, name, user+system CPU seconds and VmHWM; None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The name is in parentheses and may itself hold spaces or parentheses.
    name = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()
    ppid, utime, stime = int(fields[1]), int(fields[11]), int(fields[12])
    hwm = 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
            break
    return Reading(ppid, name, (utime + stime) / TICKS, hwm)


def children(pid: int) -> list[int]:
    """The children of PID, from its threads' ``children`` files (no scan of all /proc)."""
    found: list[int] = []
    try:
        for task in os.scandir(f"/proc/{pid}/task"):
            found += map(int, Path(f"{task.path}/children").read_text().split())
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return found


def child_name(pid: int, name: str) -> str:
    """How a child is shown: ``serve``'s delivery and webhook processes by their part,
    others by name."""
    command = command_line(pid)
    for part in ("delivery", "webhook"):
        if f"{part}-process" in command:
            return f"{part} process"
    return name


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return ""


class ProcessWatch:
    """Follows, by label: process trees; the children of a server that serve us, found by
    their command line (PostgreSQL's backends for one database); single processes (a
    shared Redis, the benchmark itself). CPU is counted from ``start``: what a process
    spent starting up, or on others' work before, is left out; peak RSS is the
    process's own. Only these processes are read, so watching costs little of the CPU
    it measures."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.roots: dict[int, str] = {}
        self.matchers: list[tuple[int, str, str]] = []  # (parent, needle, label)
        self.matching: dict[int, bool] = {}  # pid -> whether its command line matched
        self.baselines: dict[int, float] = {}  # pid -> CPU seconds when the watch started
        self.singles: dict[int, str] = {}
        self.last: dict[int, tuple[str, Reading]] = {}  # pid -> (its line, last reading)
        self._task: asyncio.Task[None] | None = None

    def add(self, pid: int, label: str) -> None:
        """The process and all its descendants."""
        self.roots[pid] = label

    def add_matching(self, parent: int, needle: str, label: str) -> None:
        """Every child of ``parent`` whose command line holds ``needle``."""
        self.matchers.append((parent, needle, label))

    def add_single(self, pid: int, label: str) -> None:
        """The process without its children."""
        self.singles[pid] = label

    def sample(self) -> None:
        for parent, needle, label in self.matchers:
            for pid in children(parent):
                if pid not in self.matching:
                    self.matching[pid] = needle in command_line(pid)
                if self.matching[pid] and (reading := read(pid)) is not None:
                    self.last[pid] = (label, reading)
        for pid, label in self.singles.items():
            if (reading := read(pid)) is not None:
                self.last[pid] = (label, reading)
        for root, label in self.roots.items():
            stack = [root]
            while stack:
                pid = stack.pop()
                if (reading := read(pid)) is not None:
                    line = label if pid == root else f"{label} > {child_name(pid, reading.name)}"
                    self.last[pid] = (line, reading)
                stack.extend(children(pid))

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self.sample()
        self.baselines = {pid: reading.cpu_seconds for pid, (_, reading) in self.last.items()}
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> list[Usage]:
        """A last sample (call it before stopping the processes), then the usage by line."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.sample()
        groups: dict[str, list[tuple[float, int]]] = {}
        for pid, (line, reading) in self.last.items():
            cpu = reading.cpu_seconds - self.baselines.get(pid, 0.0)
            groups.setdefault(line, []).append((cpu, reading.peak_rss_kb))
        return [
            Usage(line, len(items), sum(c for c, _ in items), max(r for _, r in items))
            for line, items in groups.items()
        ]
