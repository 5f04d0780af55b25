"""The webhook client's network layer (``events.network``): httpcore over asyncio's transports.

Real sockets on loopback, a server written here so each test can do to the client
what endpoints do: keep a connection, close it while idle, answer late or never,
answer with a large body, or speak TLS for a name the client asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest

from postline.events.lanes import ENDPOINTS_PER_SENDER, LANE, Lane, LaneTransport
from postline.events.network import AsyncioBackend
from tests.harness.tls import ThrowawayCA

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Endpoint:
    """An HTTP/1.1 server on loopback that counts the connections it was given."""

    def __init__(self, answer: Handler, tls: ssl.SSLContext | None = None) -> None:
        self._answer = answer
        self._tls = tls
        self.connections = 0
        self.closed = 0
        self.url = ""
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Endpoint:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self._tls)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"{'https' if self._tls else 'http'}://127.0.0.1:{port}/hook"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self._answer(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self.closed += 1


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return await reader.readexactly(length)


def response(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        body = await read_request(reader)
        writer.write(response(b"got %d" % len(body)))
        await writer.drain()


async def one_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers without ``Connection: close``, then closes: a keep-alive timeout."""
    await read_request(reader)
    writer.write(response(b"ok"))
    await writer.drain()


async def never(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    await asyncio.Event().wait()


async def post(
    transport: httpx.AsyncBaseTransport, url: str, body: bytes = b"{}", **extensions: Any
) -> httpx.Response:
    # Sender 0's lane, as the dispatcher names one for every request.
    request = httpx.Request("POST", url, content=body, extensions={LANE: 0, **extensions})
    answer = await transport.handle_async_request(request)
    try:
        await answer.aread()
    finally:
        await answer.aclose()
    return answer


async def until(check: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not check():
            await asyncio.sleep(0.01)


class CountingBackend(AsyncioBackend):
    def __init__(self) -> None:
        self.connects = 0

    async def connect_tcp(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        self.connects += 1
        return await super().connect_tcp(*args, **kwargs)


@contextlib.asynccontextmanager
async def lane_transport(network: AsyncioBackend | None = None) -> AsyncIterator[LaneTransport]:
    transport = LaneTransport(1, network)
    try:
        yield transport
    finally:
        await transport.aclose()


async def test_the_lanes_connect_through_the_given_backend_and_keep_the_connection() -> None:
    network = CountingBackend()
    async with Endpoint(keep_alive) as endpoint, lane_transport(network) as transport:
        answers = [await post(transport, endpoint.url, b"x" * n) for n in (1, 2, 3)]
    assert [a.content for a in answers] == [b"got 1", b"got 2", b"got 3"]
    assert (network.connects, endpoint.connections) == (1, 1)


async def test_a_connection_the_endpoint_closed_while_idle_is_replaced_not_failed() -> None:
    async with Endpoint(one_then_close) as endpoint, lane_transport() as transport:
        assert (await post(transport, endpoint.url)).status_code == 200
        await until(lambda: endpoint.closed == 1)
        second = await post(transport, endpoint.url)
    assert second.status_code == 200
    assert endpoint.connections == 2


async def test_a_request_without_a_lane_goes_through_the_shared_pool() -> None:
    network = CountingBackend()
    async with Endpoint(keep_alive) as endpoint, lane_transport(network) as transport:
        request = httpx.Request("POST", endpoint.url, content=b"abc")
        answer = await transport.handle_async_request(request)
        await answer.aread()
        await answer.aclose()
        assert answer.content == b"got 3"
        assert transport.lanes[0]._pool.connections == []
    assert network.connects == 0  # httpx's own pool, on its own backend


async def test_an_endpoint_that_never_answers_is_a_read_timeout() -> None:
    timeout = httpx.Timeout(5.0, read=0.3).as_dict()
    async with Endpoint(never) as endpoint, lane_transport() as transport:
        with pytest.raises(httpx.ReadTimeout):
            await post(transport, endpoint.url, timeout=timeout)


async def test_a_closed_port_is_a_connect_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with lane_transport() as transport:
        with pytest.raises(httpx.ConnectError):
            await post(transport, f"http://127.0.0.1:{port}/hook")


async def test_large_bodies_cross_whole_both_ways() -> None:
    big = bytes(range(256)) * 8192  # 2 MiB: past the read buffer's high-water mark

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body = await read_request(reader)
        writer.write(response(body))
        await writer.drain()

    async with Endpoint(echo) as endpoint, lane_transport() as transport:
        answer = await post(transport, endpoint.url, big)
    assert answer.content == big


async def test_tls_is_checked_against_the_name_asked_for(tmp_path: Path) -> None:
    ca = ThrowawayCA.create(tmp_path)
    client_tls = ssl.create_default_context(cafile=str(ca.ca_file))
    limits = httpx.Limits(max_connections=2, max_keepalive_connections=2)
    server_tls = ca.server_context("hook.example.test")
    async with Endpoint(keep_alive, server_tls) as endpoint:
        lane = Lane(client_tls, limits, AsyncioBackend())
        stranger = Lane(client_tls, limits, AsyncioBackend())
        try:
            answer = await post(lane, endpoint.url, b"abc", sni_hostname="hook.example.test")
            stream = answer.extensions["network_stream"]
            assert stream.get_extra_info("ssl_object") is not None
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await post(stranger, endpoint.url)  # the address is not the certificate's name
        finally:
            await lane.aclose()
            await stranger.aclose()
    assert answer.content == b"got 3"


async def test_a_connection_opened_for_one_tls_name_never_carries_another(tmp_path: Path) -> None:
    """Two endpoints on one address: each name is checked on a connection of its own.

    httpcore's pool knew a connection by its address alone, so the second name's POST
    went out over the connection verified for the first (certificate never checked).
    """
    ca = ThrowawayCA.create(tmp_path)
    client_tls = ssl.create_default_context(cafile=str(ca.ca_file))
    limits = httpx.Limits(max_keepalive_connections=ENDPOINTS_PER_SENDER)
    async with Endpoint(keep_alive, ca.server_context("hook.example.test")) as endpoint:
        lane = Lane(client_tls, limits, AsyncioBackend())
        try:
            answer = await post(lane, endpoint.url, b"abc", sni_hostname="hook.example.test")
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await post(lane, endpoint.url, sni_hostname="other.example.test")
            again = await post(lane, endpoint.url, b"abcd", sni_hostname="hook.example.test")
        finally:
            await lane.aclose()
    assert (answer.content, again.content) == (b"got 3", b"got 4")
    # One handshake succeeded (the server never sees the refused one), and its connection
    # was kept for the first name's second POST.
    assert endpoint.connections == 1


async def test_a_sender_keeps_its_most_recently_used_connections_only() -> None:
    network = CountingBackend()
    async with contextlib.AsyncExitStack() as stack:
        endpoints = [
            await stack.enter_async_context(Endpoint(keep_alive))
            for _ in range(ENDPOINTS_PER_SENDER + 1)
        ]
        transport = await stack.enter_async_context(lane_transport(network))
        for endpoint in endpoints:
            assert (await post(transport, endpoint.url)).status_code == 200
        await until(lambda: endpoints[0].closed == 1)  # the least recently used one
        assert [e.closed for e in endpoints[1:]] == [0] * ENDPOINTS_PER_SENDER
        for endpoint in endpoints[1:]:
            assert (await post(transport, endpoint.url)).status_code == 200
        assert network.connects == ENDPOINTS_PER_SENDER + 1  # the kept ones were used again
