"""The supervisor: runs the chosen parts of Postline as named tasks and stops them gracefully.

Like Postfix's master it owns the signals: SIGTERM or SIGINT stops taking
work, lets in-flight deliveries finish up to the shutdown timeout and
releases the rest to the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
from typing import TYPE_CHECKING

from postline.app import Services, inbound_listener, start_sandbox
from postline.config import ConfigError
from postline.delivery_process import READY_TIMEOUT, ChildProcess, Part
from postline.housekeeping import housekeeping
from postline.inbound.listener import InboundListener
from postline.sandbox.simulator import Simulator
from postline.sockets import listen

if TYPE_CHECKING:
    from postline.api.server import QuietServer
    from postline.submission.server import SubmissionServer

log = logging.getLogger("postline")


def _loopback(host: str) -> str:
    """Where to connect to a server listening on ``host`` from this host."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


async def _close(
    listener: socket.socket | None, simulator: Simulator | None, inbound: InboundListener | None
) -> None:
    """Close what ``serve`` opened before its tasks: at the end, or when a later part
    could not start."""
    if listener is not None:
        listener.close()
    if simulator is not None:
        await simulator.stop()
    if inbound is not None:
        await inbound.stop()


def freeze_start_up_objects() -> None:
    """Keep what start-up made (modules, the app, drivers: some 240,000 objects that live
    as long as the process) out of the garbage collector's full passes.

    A full pass looks at every tracked object, and the parsed JSON of a large batch
    triggers one: with start-up's objects in sight it held the event loop for 0.25 to
    0.9 s on a loaded 2-core machine (the longest stall while the largest batch was
    accepted; /healthz waited for it); frozen, no pass over 5 ms was seen. What is
    frozen is never collected, which is what start-up's objects need anyway; it is
    undone when ``serve`` returns (``gc.unfreeze``), for a process that serves again (the
    tests run it in process, one test after another).
    """
    gc.collect()
    gc.freeze()


async def _all_set(*events: asyncio.Event) -> None:
    for event in events:
        await event.wait()


async def serve(
    services: Services,
    *,
    api: bool = True,
    engine: bool = True,
    sandbox: bool = False,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    delivery_process: bool = False,
    webhooks: bool = True,
) -> None:
    """Run the chosen parts until SIGTERM/SIGINT (or ``stop``), then shut down gracefully.

    ``engine``: the delivery engine and housekeeping; ``webhooks``: the webhook
    dispatcher. ``delivery_process``: neither runs here but each in a child process of
    its own (postline.delivery_process), this one keeping the API and the SMTP doors.
    """
    stop = stop or asyncio.Event()
    host, port = services.settings.http_host_port
    listener = listen(host, port) if api else None
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    # The inbound MX (late bounces and complaints) runs with the API: both face the outside.
    inbound = inbound_listener(services, *services.settings.inbound_host_port) if api else None
    if inbound is not None:
        try:
            await inbound.start()
        except OSError as exc:
            if listener is not None:
                listener.close()
            addr = services.settings.inbound_addr
            raise ConfigError(
                f"POSTLINE_INBOUND_ADDR {addr}: cannot listen ({exc.strerror})"
            ) from None
    # The simulator files its complaints at this process's own inbound MX, on loopback.
    complaints_to = (_loopback(inbound.host), inbound.port) if inbound is not None else None
    simulator = await start_sandbox(services, complaints_to) if sandbox else None
    # The SMTP submission door opens with the HTTP one: both accept mail.
    submission: SubmissionServer | None = None
    if api:
        # Imported here, with the API's: a worker or ``serve``'s children never serve
        # them, and FastAPI, uvicorn and the rest cost each of them 0.3-0.4 s of CPU
        # at every start (``python -X importtime``).
        from postline.submission.server import SubmissionServer

        submission = SubmissionServer(services)
    if submission is not None:
        try:
            await submission.start()
        except BaseException:
            await _close(listener, simulator, inbound)
            raise
    tasks: list[asyncio.Task[None]] = []
    server: QuietServer | None = None
    if listener is not None:
        from postline.api.app import create_api
        from postline.api.server import QuietServer, server_config

        server = QuietServer(server_config(create_api(services), services.settings))
        tasks.append(asyncio.create_task(server.serve(sockets=[listener]), name="api"))
    if engine and not delivery_process:
        tasks.append(asyncio.create_task(services.engine.run(stop), name="engine"))
        tasks.append(asyncio.create_task(housekeeping(services, stop), name="housekeeping"))
        # Jobs that an API in another process queues wake the engine (and the dispatcher,
        # for their events) at once, not at the next poll; on SQLite nothing to watch.
        watch = services.queue.watch_work(services.wakeups.work_arrived, stop)
        tasks.append(asyncio.create_task(watch, name="queue watch"))
    if webhooks and not delivery_process:
        tasks.append(asyncio.create_task(services.dispatcher.run(stop), name="webhooks"))
    if server is not None:
        while not server.started and not tasks[0].done():  # noqa: ASYNC110 - uvicorn has no event
            await asyncio.sleep(0.02)
    if api:
        # Once the API answers, as the child processes below: not on the first email.
        services.compose_pool.start()
    if delivery_process:
        # Started once the API answers: their start-up (imports, recovery, warm-up) would
        # otherwise compete with the parent's for the CPU and the database.
        hooks = ChildProcess(services.settings, Part.WEBHOOKS)
        child = ChildProcess(
            services.settings, Part.DELIVERY, dict(services.router.static), hooks.wake_work
        )
        # Jobs wake the engine; events (an accept's, or the outcomes the delivery process
        # tells of) wake the dispatcher.
        services.wakeups.on_work(child.wake_work)
        services.wakeups.on_events(hooks.wake_work)
        tasks.append(asyncio.create_task(child.run(stop), name="delivery process"))
        tasks.append(asyncio.create_task(hooks.run(stop), name="webhook process"))
        # Announced once both run: "running" means all of it, and the children's
        # start-up (imports, recovery) does not compete with the first requests.
        started = asyncio.ensure_future(_all_set(child.ready, hooks.ready))
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait(
            [started, stopping], timeout=READY_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        for waiter in (started, stopping):
            waiter.cancel()
    freeze_start_up_objects()
    if ready is not None:
        ready.set()
    stopper = asyncio.create_task(stop.wait(), name="stop")
    await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    log.info("shutting down")
    if server is not None:
        server.should_exit = True
    if submission is not None:
        await submission.stop(services.settings.shutdown_timeout)
    await asyncio.gather(*tasks, return_exceptions=True)
    await _close(listener, simulator, inbound)
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signum)
    gc.unfreeze()
    log.info("stopped")
