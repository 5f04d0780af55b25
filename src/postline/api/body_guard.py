"""Request bodies: the caller is authenticated before a byte of the body is read, and the
body is counted as it arrives, chunked or not, and refused with 413 the moment it passes
the limit.

Starlette reads a body whole before anything looks at it, and a ``Content-Length`` check
alone let a ``Transfer-Encoding: chunked`` upload of any size through, with or without an
API key (issue 20). This pure ASGI middleware sits in front of the application: while it
waits for the key's lookup uvicorn buffers at most its high-water mark (64 KiB) and then
stops reading the socket, so an anonymous upload costs one socket buffer. After a refusal
the server (``api.server.GuardedHttp``) reads nothing more of the connection and closes
it a little later, so that the client can read the answer first.

A keyed upload is read up to the limit before it is refused, and the allocator may keep
what its chunks took (the HTTP door test's 60 MB upload left 7 to 20 MB of a 36 MB limit
behind in 3 of 8 runs): after such a refusal the freed memory is handed back to the system
(glibc's ``malloc_trim``), so that refused uploads leave nothing behind.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections import deque
from collections.abc import Callable

from sqlalchemy.exc import DBAPIError
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from postline.api.auth import SCOPE_KEY, identify
from postline.api.problems import Problem, problem_response, storage_unavailable
from postline.keys import Authenticator

#: Paths whose requests need an API key; the operations endpoints take none.
AUTHENTICATED_PREFIX = "/v1/"


def _declares_body(headers: Headers) -> bool:
    length = headers.get("content-length")
    return "transfer-encoding" in headers or (length is not None and length != "0")


class BodyGuard:
    """Authenticate, then read the body up to ``limit`` bytes, then run the application
    with the body it would have read itself."""

    def __init__(self, app: ASGIApp, *, authenticator: Authenticator, limit: int) -> None:
        self.app = app
        self.authenticator = authenticator
        self.limit = limit
        self._give_back = _memory_giver()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if not _declares_body(headers):
            await self.app(scope, receive, send)
            return
        if scope["path"].startswith(AUTHENTICATED_PREFIX):
            try:
                scope[SCOPE_KEY] = await identify(
                    self.authenticator, headers.get("authorization", "")
                )
            except Problem as exc:
                await self._refuse(
                    scope, receive, send, exc.status, exc.detail, exc.headers, exc.name
                )
                return
            except DBAPIError as exc:
                await storage_unavailable(exc)(scope, receive, send)
                return
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await self._too_large(scope, receive, send)
            return
        chunks = await self._read(receive)
        if chunks is None:
            self._give_back()  # the chunks read up to the limit are freed by now
            await self._too_large(scope, receive, send)
        elif chunks:
            await self.app(scope, _replay(chunks, receive), send)
        # [] : the client went away before its body was complete; nobody to answer.

    async def _read(self, receive: Receive) -> list[bytes] | None:
        """The body's chunks as they came (no copy), None past the limit, [] on disconnect."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return []
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = f"the request body is larger than {self.limit} bytes"
        await self._refuse(scope, receive, send, 413, detail, None)

    async def _refuse(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        status: int,
        detail: str,
        headers: dict[str, str] | None,
        name: str | None = None,
    ) -> None:
        # Not with ``Connection: close``: uvicorn would close the socket at once, and a
        # close with unread data is a reset that can reach the client before this answer.
        await problem_response(status, detail, headers=headers, name=name)(scope, receive, send)


def _memory_giver() -> Callable[[], None]:
    """What hands freed memory back to the system: glibc's ``malloc_trim(0)``, or nothing
    where there is no glibc."""
    name = ctypes.util.find_library("c") if sys.platform.startswith("linux") else None
    try:
        trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:  # a C library that cannot be loaded: nothing to hand memory back with
        trim = None
    if trim is None:
        return lambda: None

    def give_back() -> None:
        trim(0)

    return give_back


def _replay(chunks: list[bytes], receive: Receive) -> Receive:
    """A ``receive`` that gives the chunks already read, then passes on to the server's
    (which tells of a disconnect)."""
    pending = deque(chunks)

    async def replay() -> Message:
        if pending:
            chunk = pending.popleft()
            return {"type": "http.request", "body": chunk, "more_body": bool(pending)}
        return await receive()

    return replay
