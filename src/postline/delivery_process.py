"""``postline serve``'s child processes: the delivery engine and housekeeping run in
one, the webhook dispatcher in another; the API and the SMTP doors in the parent.

One Python process has one core's worth of GIL: accepting (HTTP, validation, the
accept commit), delivering (SMTP, recording) and the webhook POSTs took turns on it
while the machine's other core idled. Each child is a ``postline worker`` with one of
its two parts, so it shares the database, queue and spool with the parent exactly as
workers of the distributed topology share them with API processes: leases, not the
process, decide who delivers or sends what, and the code paths are the ones the
scale-out tests cover. The webhook POSTs have a process of their own because no two
of the three loads share one core's GIL well on a 2-core machine: with the dispatcher
in the parent, the parent was held to one core while accepting, with a tenth to a fifth
of the machine idle; beside the engine, delivery finished last (docs/PERFORMANCE.md,
stop 34). Three processes let the kernel give the cores to whichever load has work.

What the single process had for free, the children keep:

- Wake-ups. The parent writes a byte to a pipe after each commit of jobs (to the
  delivery process) and of events (to the webhook process), and the child wakes its
  engine or its dispatcher at once instead of at its next poll; the delivery process
  writes one to a second pipe after each commit of events (outcomes), which the parent
  passes on to the webhook process. Neither pipe is ever waited on: a full pipe holds a
  wake-up already.
- Fate. A child dies with its parent (``PR_SET_PDEATHSIG`` on Linux; elsewhere it
  stops when the pipe's write end closes), so killing ``postline serve`` kills all of
  it, as before; SIGTERM to the parent reaches the children, which drain as a worker
  does.
- A child that dies on its own is started again, after 1 s, doubling to at most 30 s
  while it keeps dying young; its leases are recovered like any dead worker's.
- Metrics. All three processes count into prometheus_client's multiprocess files
  under the data dir, and the parent's ``/metrics`` sums them (``Metrics``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from postline.config import Settings

log = logging.getLogger("postline")

#: A byte on a wake pipe: work was committed (to a child), or events (to the parent).
WORK = b"w"
EVENTS = b"e"
#: The child's first byte once its engine runs: ``serve`` announces itself after it.
READY = b"r"
#: How long ``serve`` waits for that before it announces itself anyway.
READY_TIMEOUT = 60.0
#: prometheus_client reads this when it is first imported; set before that.
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
_PR_SET_PDEATHSIG = 1
_FIRST_RESTART_DELAY = 1.0
_MAX_RESTART_DELAY = 30.0
#: A child that ran this long died of something new: its next restart waits 1 s again.
_YOUNG_SECONDS = 60.0


def metrics_dir(settings: Settings) -> Path:
    return settings.data_dir / "run" / "metrics"


def share_metrics(settings: Settings) -> None:
    """Make this process and its children count into shared metrics files, from zero.

    Called by the parent before anything imports prometheus_client (it chooses how to
    store values at import): the child inherits the environment variable.
    """
    if "prometheus_client" in sys.modules:
        raise RuntimeError("share_metrics must run before prometheus_client is imported")
    # prometheus_client creates its files with the process's umask: keep them, like
    # everything in the data dir, to this user (the child inherits the umask).
    os.umask(0o077)
    directory = metrics_dir(settings)
    shutil.rmtree(directory, ignore_errors=True)
    directory.parent.mkdir(mode=0o700, exist_ok=True)
    directory.mkdir(mode=0o700)
    os.environ[METRICS_DIR_ENV] = str(directory)


class Part(StrEnum):
    """What a child runs; its value names it in the logs ("delivery process")."""

    DELIVERY = "delivery"  # the engine and housekeeping
    WEBHOOKS = "webhook"  # the dispatcher

    @property
    def command(self) -> str:
        """Its hidden command: ``postline delivery-process`` or ``postline webhook-process``."""
        return f"{self.value}-process"


@dataclass
class ChildProcess:
    """The parent's side: starts the child, wakes it, restarts it, stops it."""

    settings: Settings
    part: Part = Part.DELIVERY
    #: Static routes the child's engine needs (the sandbox simulator's address).
    routes: dict[str, tuple[str, int]] = field(default_factory=dict)
    #: Called when the child committed events (the webhook process is woken).
    events_written: Callable[[], None] = lambda: None
    process: asyncio.subprocess.Process | None = None
    #: Set once the (first) child said it runs.
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    _wake_fd: int | None = None
    _events_fd: int | None = None

    def wake_work(self) -> None:
        # A closed pipe belongs to a dead child, whose successor leases what is due
        # when it starts.
        if self._wake_fd is not None:
            send_wake(self._wake_fd, WORK)

    async def start(self) -> None:
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        events_read, events_write = os.pipe()
        args = [
            sys.executable,
            "-m",
            "postline",
            self.part.command,
            "--wake-fd",
            str(read_fd),
            "--events-fd",
            str(events_write),
            "--parent-pid",
            str(os.getpid()),
        ]
        for domain, (host, port) in sorted(self.routes.items()):
            args += ["--route", f"{domain}={host}:{port}"]
        env = os.environ | {
            "POSTLINE_DATA_DIR": str(self.settings.data_dir.resolve()),
            "POSTLINE_SANDBOX": "false",
            "POSTLINE_DELIVERY_PROCESS": "false",
        }
        try:
            self.process = await asyncio.create_subprocess_exec(
                *args,
                pass_fds=(read_fd, events_write),
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
            )
        except BaseException:
            os.close(write_fd)
            os.close(events_read)
            raise
        finally:
            os.close(read_fd)
            os.close(events_write)
        self._close_pipes()
        self._wake_fd, self._events_fd = write_fd, events_read
        read_wakes(events_read, self._heard, lambda: None)
        log.info("%s %d started", self.name, self.process.pid)

    @property
    def name(self) -> str:
        """How the logs call it: "delivery process" or "webhook process"."""
        return f"{self.part.value} process"

    def _heard(self, data: bytes) -> None:
        if READY in data:
            self.ready.set()
        self.events_written()

    def _close_pipes(self) -> None:
        if self._events_fd is not None:
            asyncio.get_running_loop().remove_reader(self._events_fd)
            os.close(self._events_fd)
        if self._wake_fd is not None:
            os.close(self._wake_fd)
        self._wake_fd = self._events_fd = None

    async def run(self, stop: asyncio.Event) -> None:
        """Keep a child running until ``stop``; then stop it gracefully."""
        delay = _FIRST_RESTART_DELAY
        try:
            while not stop.is_set():
                if self.process is None:
                    await self.start()
                assert self.process is not None
                started = time.monotonic()
                exited = asyncio.create_task(self.process.wait())
                stopping = asyncio.create_task(stop.wait())
                await asyncio.wait([exited, stopping], return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                if stop.is_set():
                    exited.cancel()
                    break
                code = exited.result()
                if time.monotonic() - started > _YOUNG_SECONDS:
                    delay = _FIRST_RESTART_DELAY
                log.error(
                    "%s %d exited with %s; starting another in %.0f s",
                    self.name,
                    self.process.pid,
                    code,
                    delay,
                )
                self.process = None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                delay = min(delay * 2, _MAX_RESTART_DELAY)
        finally:
            await self._stop_child()

    async def _stop_child(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            # The child drains for up to POSTLINE_SHUTDOWN_TIMEOUT; then it is killed.
            try:
                await asyncio.wait_for(process.wait(), self.settings.shutdown_timeout + 10)
            except TimeoutError:
                log.error("%s %d did not stop; killing it", self.name, process.pid)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        self._close_pipes()


@dataclass(frozen=True)
class ChildLink:
    """The child's side: what its parent passed on the command line."""

    wake_fd: int
    events_fd: int
    parent_pid: int
    routes: dict[str, tuple[str, int]]

    def die_with_parent(self) -> None:
        """Be killed when the parent dies (Linux), and leave if it is gone already."""
        libc_name = ctypes.util.find_library("c")
        if sys.platform.startswith("linux") and libc_name:
            libc = ctypes.CDLL(libc_name, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != self.parent_pid:
            raise SystemExit(0)

    def listen(self, work_arrived: Callable[[], None], parent_gone: Callable[[], None]) -> None:
        """Call ``work_arrived`` when the parent says so; ``parent_gone`` when its pipe closes."""
        os.set_blocking(self.events_fd, False)
        read_wakes(self.wake_fd, lambda data: work_arrived(), parent_gone)

    def events_written(self) -> None:
        """Tell the parent that events were committed here (for the webhook process)."""
        send_wake(self.events_fd, EVENTS)

    async def tell_ready(self, ready: asyncio.Event) -> None:
        """Tell the parent once this process runs (``ready``)."""
        await ready.wait()
        send_wake(self.events_fd, READY)


def send_wake(fd: int, byte: bytes) -> None:
    """Write a wake-up without waiting: a full pipe holds one already, a closed one has
    nobody left to wake."""
    with contextlib.suppress(BlockingIOError, BrokenPipeError):
        os.write(fd, byte)


def read_wakes(fd: int, woken: Callable[[bytes], None], closed: Callable[[], None]) -> None:
    """Call ``woken`` with what arrived on ``fd`` whenever it is readable (many wake-ups
    read as one), ``closed`` once its writer is gone."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)

    def readable() -> None:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        if not data:
            loop.remove_reader(fd)
            closed()
            return
        woken(data)

    loop.add_reader(fd, readable)


def parse_route(text: str) -> tuple[str, tuple[str, int]]:
    """``domain=host:port`` as the parent writes it."""
    domain, _, address = text.partition("=")
    host, _, port = address.rpartition(":")
    return domain, (host.strip("[]"), int(port))
