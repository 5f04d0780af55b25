"""A real HTTP webhook receiver on loopback (uvicorn + a bare ASGI app), in the test's loop.

It records every request, can answer errors for a while, and is the only
thing webhook tests ever connect to: see ``LoopbackOnly``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self

import httpx
import uvicorn


@dataclass
class Hook:
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    host: str = "127.0.0.1"
    received: list[Hook] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)  # statuses to answer next, in order
    default_status: int = 200
    extra_headers: dict[str, str] = field(default_factory=dict)
    port: int = 0
    _server: uvicorn.Server | None = None
    _task: asyncio.Task[None] | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/hooks"

    def fail_next(self, count: int, status: int = 503) -> None:
        self.answers.extend([status] * count)

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        status = self._status(body, headers)
        self.received.append(Hook(headers, body, status))
        self._changed.set()
        extra = [(k.encode(), v.encode()) for k, v in self.extra_headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": extra})
        await send({"type": "http.response.body", "body": b"ok" if status < 300 else b"nope"})

    def _status(self, body: bytes, headers: dict[str, str]) -> int:
        """The status to answer this delivery with: what ``fail_next`` queued, else the
        default. A receiver that checks signatures overrides this."""
        return self.answers.pop(0) if self.answers else self.default_status

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app, log_config=None, access_log=False, lifespan="off", interface="asgi3"
        )
        self._server = uvicorn.Server(config)
        self._server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await asyncio.wait_for(self._task, timeout=10)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def wait_until(
        self, predicate: Callable[[list[Hook]], bool], timeout: float = 15, what: str = ""
    ) -> list[Hook]:
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate(self.received):
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                last = [(h.status, h.headers.get("webhook-id")) for h in self.received[-10:]]
                raise AssertionError(
                    f"receiver: timed out waiting for {what or 'condition'}; "
                    f"got {len(self.received)} requests, the last {len(last)}: {last}"
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=min(remaining, 0.2))
        return self.received


class LoopbackOnly(httpx.AsyncBaseTransport):
    """The dispatcher's transport in tests: any connection off loopback fails the test."""

    def __init__(self) -> None:
        # Made at the first request: most tests never send one, and httpx loads its CA
        # bundle for every transport (24 ms of CPU per test).
        self._inner: httpx.AsyncHTTPTransport | None = None
        self.violations: list[str] = []

    @property
    def inner(self) -> httpx.AsyncHTTPTransport:
        if self._inner is None:
            self._inner = httpx.AsyncHTTPTransport()
        return self._inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            self.violations.append(str(request.url))
            raise AssertionError(f"webhook test tried to connect to {request.url}")
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        if self._inner is not None:
            await self._inner.aclose()
