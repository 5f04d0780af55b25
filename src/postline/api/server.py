"""The HTTP server's own defences against slow and greedy clients (issue 20).

Uvicorn times out idle keep-alive connections but not a request whose headers never
finish: 300 sockets that each send half a request line held 300 descriptors for as
long as they liked. :class:`GuardedHttp` is uvicorn's httptools protocol with three
more rules:

- a request's headers must be complete within ``POSTLINE_HTTP_HEADER_TIMEOUT`` seconds
  of the connection opening or of the previous answer, else the connection is closed;
- they may not exceed :data:`MAX_HEADER_BYTES` (431 and close), so the time allowed
  cannot be spent streaming megabytes of header lines into memory;
- at most ``POSTLINE_HTTP_MAX_CONNECTIONS`` connections are open at once; one more is
  answered 503 and closed at once, before anything is read from it.

The clock stops while a request is being answered (a long upload or a slow database
is not a slow client) and starts again for the next request on the connection. A
request answered before its body was read (``api.body_guard``'s 401 and 413) is not
read further: the connection stops reading and is closed after the same timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any, cast

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from postline.config import Settings

#: Request line and headers together; far above any real client's (browsers send < 8 KiB).
MAX_HEADER_BYTES = 64 * 1024

_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n"
    b"content-length: 31\r\nretry-after: 1\r\nconnection: close\r\n\r\n"
    b"too many connections, try again"
)
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain\r\n"
    b"content-length: 25\r\nconnection: close\r\n\r\nrequest headers too large"
)


class GuardedHttp(HttpToolsProtocol):
    """Uvicorn's HTTP/1.1 protocol with a header deadline, a header size cap and a
    connection cap; the limits are class attributes set by :func:`protocol_for`."""

    header_timeout: float = 10.0
    max_connections: int = 1000

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._refused = False
        self._deadline: asyncio.TimerHandle | None = None
        self._awaiting_headers = False
        self._header_bytes = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport; uvloop's is not a subclass of asyncio.Transport.
        transport = cast(asyncio.Transport, transport)
        if len(self.connections) >= self.max_connections:
            # Not registered, not read from: the descriptor is given back at once.
            self._refused = True
            transport.write(_BUSY)
            transport.close()
            return
        super().connection_made(transport)
        self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_clock()
        if not self._refused:
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused or self.transport.is_closing():
            return
        if self._awaiting_headers:
            self._header_bytes += len(data)
        super().data_received(data)
        # Still waiting for the end of the headers after this much: refuse.
        if self._awaiting_headers and self._header_bytes > MAX_HEADER_BYTES:
            self._stop_clock()
            if not self.transport.is_closing():
                self.transport.write(_TOO_LARGE)
                self.transport.close()

    def on_headers_complete(self) -> None:
        self._stop_clock()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        # Answered before the request's body was all read (a 401 or 413 of
        # api.body_guard): the rest is never read.
        unread_body = self.cycle is not None and self.cycle.more_body
        # A pipelined request's headers are already in; it starts now, not its clock.
        pipelined = bool(self.pipeline)
        super().on_response_complete()
        if self.transport.is_closing():
            return
        if unread_body:
            self._linger()
        elif not pipelined:
            self._await_headers()

    def _await_headers(self) -> None:
        self._stop_clock()
        self._awaiting_headers = True
        self._header_bytes = 0
        self._deadline = self.loop.call_later(self.header_timeout, self._close)

    def _linger(self) -> None:
        """Stop reading, and close only after the header timeout: closing a socket with
        unread data resets it, and a client still sending would lose the answer it was
        given (uvicorn instead reads, and drops, the rest of the body: 60 MB, say)."""
        self._stop_clock()
        self.flow.pause_reading()
        self._deadline = self.loop.call_later(self.header_timeout, self._close)

    def _stop_clock(self) -> None:
        self._awaiting_headers = False
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _close(self) -> None:
        self._deadline = None
        self._awaiting_headers = False
        if not self.transport.is_closing():
            self.transport.close()


def protocol_for(settings: Settings) -> type[GuardedHttp]:
    """:class:`GuardedHttp` with this deployment's limits (uvicorn makes the instances)."""
    return type(
        "GuardedHttp",
        (GuardedHttp,),
        {
            "header_timeout": settings.http_header_timeout,
            "max_connections": settings.http_max_connections,
        },
    )


def server_config(app: Any, settings: Settings) -> uvicorn.Config:
    host, port = settings.http_host_port
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol_for(settings),
        ws="none",
        log_config=None,
        access_log=False,
        lifespan="off",
        server_header=False,
        # X-Forwarded-For is believed only from POSTLINE_TRUSTED_PROXIES, in the app
        # (postline.api.client_address); uvicorn's default would trust any loopback peer.
        proxy_headers=False,
    )


class QuietServer(uvicorn.Server):
    """Uvicorn without its own signal handling: the supervisor owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
