"""Building and signing messages off the event loop.

The stdlib ``email`` package and DKIM canonicalisation are pure Python: one batch
of large messages kept the loop busy for seconds, and with it ``/healthz`` and
every delivery (issue 20). They now run in a worker pool the composition root
owns (``app.Services``) and hands to the acceptor.

A process pool, not a thread pool (measured with ``bench/offloop.py``): a worker
thread holds the GIL while it builds and gives it back only at switch intervals
and never inside one long C call, so the loop still stalled 110-160 ms behind a
batch and 0.6-1.1 s behind the base64 and DKIM passes over a large attachment;
with worker processes those were 90-155 ms and 65-125 ms on a loaded two-core
machine, and a batch built as fast or faster. The price is pickling (the content
there, the body back, done by the executor's own threads) and start-up: workers
come from a ``forkserver`` that preloads this module, so a new one costs a fork,
not an interpreter. Keys cross as PEM and are parsed once per worker
(:func:`_signing_key`); the tracking key crosses with the linker of a tracked copy.
A small email that comes alone is the exception: the acceptor builds it on the loop
(``accept._small``), where it costs less than the trip.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import multiprocessing.connection
import os
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import datetime
from typing import ParamSpec, TypeVar

from postline import dkim
from postline.message import Content, build_message
from postline.tracking.rewrite import Linker, Tracking
from postline.tracking.rewrite import apply as apply_tracking

log = logging.getLogger("postline.compose")

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class Composition:
    """What to build: the client's content (or a message as received) and how to sign it."""

    content: Content
    message_id: str
    date: datetime
    raw: bytes | None = None
    signer: Signer | None = None
    #: Open and click tracking to apply first (``postline.tracking.rewrite``), with the
    #: linker whose tokens name this copy's recipient. Here, not on the loop: a tracked
    #: email is built once per recipient, and 1,000 rewrites of a newsletter, with a
    #: signed token per link each, held the loop for half a second.
    tracking: Tracking | None = None
    linker: Linker | None = None


@dataclass(frozen=True)
class Signer:
    """A domain's DKIM key as stored: plain values, so it crosses to a worker process."""

    domain: str
    selector: str
    private_key_pem: str


@functools.lru_cache(maxsize=256)
def _signing_key(signer: Signer) -> dkim.DkimKey:
    """Parsed once per worker: parsing the PEM costs more than a signature."""
    return dkim.DkimKey(signer.domain, signer.selector, signer.private_key_pem)


def compose(item: Composition) -> bytes:
    """The message ready for the spool: built unless given whole, then DKIM-signed."""
    content = item.content
    if item.tracking is not None and item.linker is not None:
        content = apply_tracking(content, item.tracking, item.linker)
    body = item.raw or build_message(content, message_id=item.message_id, date=item.date)
    if item.signer is not None:
        body = dkim.sign(body, _signing_key(item.signer))
    return body


def compose_many(items: list[Composition]) -> list[bytes]:
    """:func:`compose` for several: one trip to a worker for all of them.

    A trip costs a future, a pickling each way and a wake-up of the executor's
    threads on the event loop's side; for a batch of 500 small emails those trips
    cost the loop more than building the messages cost the worker.
    """
    return [compose(item) for item in items]


def pool_size() -> int:
    """A worker per core this process may use.

    One core was left to the event loop until stop 40: on two cores that built a batch
    of 500 with one worker, 0.4-0.7 s of the request's 0.5-0.8 s, while the loop mostly
    waited. With a worker per core the batch intake rose by about a sixth (interleaved
    runs, docs/PERFORMANCE.md "Stop 40"); ``tests/acceptance/test_responsive.py`` still
    sees /healthz answer within 26-77 ms during the largest batch. A third worker on two
    cores was slower again.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        cores = os.cpu_count() or 1
    return max(1, cores)


def _process_pool(workers: int) -> ProcessPoolExecutor:
    """``forkserver``, not ``fork``: forking a process that runs threads (the executor's,
    the database driver's) can copy a lock held by one of them into the child."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["postline.compose"])
    return ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_die_with_parent
    )


def _die_with_parent() -> None:
    """A worker ends when the process that owns the pool does, even by SIGKILL.

    Without this a killed ``postline`` leaves its workers waiting on their call queue
    for ever, holding its stdout and stderr open; and the forkserver cannot notice
    either, since every worker holds its "alive" pipe too. Each worker gets a pipe
    end from its owner (the parent sentinel) that reaches EOF when the owner dies.
    """
    owner = multiprocessing.parent_process()
    if owner is None:  # not a pool worker (called by hand)
        return
    threading.Thread(target=_exit_on_eof, args=(owner.sentinel,), daemon=True).start()


def _exit_on_eof(sentinel: int) -> None:
    multiprocessing.connection.wait([sentinel])
    os._exit(0)


def _started() -> None:
    """Nothing: what each worker is given by ``RenewingPool.start``, so that it starts."""


class RenewingPool(Executor):
    """A process pool that starts afresh once broken.

    When one worker dies (killed for memory, say) a ``ProcessPoolExecutor`` fails what
    it was running and refuses everything after: without this, one lost worker would
    have refused all mail until a restart. The requests in flight then fail; the next
    one gets new workers.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool = _process_pool(workers)

    def start(self) -> None:
        """Start every worker now instead of with the first emails to compose.

        Workers start on demand, and the first also starts the forkserver, which
        imports ``postline.compose``: on a 2-core machine the first send after
        ``postline serve`` printed its banner took 1.3 s, and 0.13-0.14 s with the
        workers started here. ``serve`` and ``api`` call this once the API answers.
        """
        for _ in range(self.workers):
            self.submit(_started)

    @property
    def running(self) -> int:
        """How many worker processes are alive."""
        processes = self._pool._processes or {}
        return sum(1 for process in processes.values() if process.is_alive())

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        try:
            return self._pool.submit(fn, *args, **kwargs)
        except BrokenProcessPool:
            log.warning("a compose worker died; starting %d new ones", self.workers)
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = _process_pool(self.workers)
            return self._pool.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)


def new_pool(workers: int = 0) -> RenewingPool:
    """The pool ``Services.build`` creates and ``Services.close`` shuts down."""
    return RenewingPool(workers or pool_size())
