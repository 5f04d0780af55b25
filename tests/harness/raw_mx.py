"""The lifecycle shared by the raw asyncio SMTP servers (``BatchMX``, ``EvilMX``).

They are raw (not aiosmtpd) because they must be able to lie. What they say differs;
how they listen, record a session per client and hang up on every client when the test
ends does not, so it lives here once. A subclass gives the session record to make for
each client and writes ``_converse``: the conversation with one client.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
from collections.abc import Callable
from types import TracebackType
from typing import Generic, Protocol, Self, TypeVar

__all__ = ["RawMX", "RawSession"]

#: How long ``stop()`` waits for the session tasks and the listener to end.
STOP_TIMEOUT = 2.0


class RawSession(Protocol):
    """What the lifecycle needs of a session record: whether its client is gone."""

    closed: bool


SessionT = TypeVar("SessionT", bound=RawSession)


class RawMX(abc.ABC, Generic[SessionT]):
    """Listens on ``host:port`` (port 0: any free one, set by ``start()``) and records one
    ``SessionT`` per client in ``sessions``. ``async with`` starts and stops it."""

    def __init__(self, host: str, port: int, session: Callable[[int], SessionT]) -> None:
        self.host = host
        self.port = port
        self.sessions: list[SessionT] = []
        self._new_session = session
        self._server: asyncio.Server | None = None
        self._clients: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError(f"{type(self).__name__} already started")
        self._server = await asyncio.start_server(self._session, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening, hang up on every client and end every session task (bounded:
        it never waits for a client)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task, writer in list(self._clients.items()):
            writer.transport.abort()
            task.cancel()
        if self._clients:
            await asyncio.wait(list(self._clients), timeout=STOP_TIMEOUT)
        if server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), timeout=STOP_TIMEOUT)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def connections(self) -> int:
        return len(self.sessions)

    @property
    def open_connections(self) -> int:
        return sum(not s.closed for s in self.sessions)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One client: registered so ``stop()`` can hang up on it, closed whatever happens."""
        task = asyncio.current_task()
        assert task is not None
        self._clients[task] = writer
        session = self._new_session(len(self.sessions) + 1)
        self.sessions.append(session)
        try:
            await self._converse(session, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass  # the client hung up (ValueError: a line over the StreamReader limit)
        finally:
            session.closed = True
            self._clients.pop(task, None)
            writer.close()

    @abc.abstractmethod
    async def _converse(
        self, session: SessionT, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Talk to one client until it quits or hangs up (a hang-up may raise)."""
