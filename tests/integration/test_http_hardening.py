"""The HTTP door against anonymous and greedy clients (issue 20, items 1 and 6).

A request body is read only after its API key was checked, is counted as it arrives
(chunked or not) and is refused with 413 once it passes the limit; a request whose
headers never finish is closed after ``POSTLINE_HTTP_HEADER_TIMEOUT`` and connections
beyond ``POSTLINE_HTTP_MAX_CONNECTIONS`` are refused. The ASGI tests count what the
application pulled from the client's stream; the socket tests run the real uvicorn
server of ``postline serve`` (``supervisor.serve``) at its defaults unless a test says
otherwise, and talk raw HTTP/1.1 to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx

from postline.api.server import MAX_HEADER_BYTES
from postline.supervisor import serve
from tests.harness.polling import poll
from tests.harness.postline import Factory, PostlineUnderTest
from tests.harness.raw_http import CHUNK, DEADLINE, chunked_upload, closed, read_answer

MB = 1024 * 1024
#: What the attack run sent: far beyond the default limit (25 MB message -> ~36 MB body).
UPLOAD = 60 * MB


def email(**overrides: Any) -> dict[str, Any]:
    body = {"from": "Sender <sender@example.test>", "to": ["a@dest.test"], "subject": "Hi"}
    body["text"] = "Hello"
    return body | overrides


class CountingBody:
    """A streamed request body (sent chunked) that counts how much of it was pulled."""

    def __init__(self, total: int, chunk: bytes = b"x" * CHUNK) -> None:
        self.total = total
        self.chunk = chunk
        self.pulled = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.pulled < self.total:
            self.pulled += len(self.chunk)
            yield self.chunk


async def _stream(postline: PostlineUnderTest, body: CountingBody, **headers: str) -> Any:
    return await postline.client.post(
        "/v1/emails/batch", content=body, headers={"Content-Type": "application/json", **headers}
    )


# --- the body, in process -----------------------------------------------------------------


async def test_no_body_is_read_before_the_key_is_checked(postline_factory: Factory) -> None:
    postline = await postline_factory(engine=False)
    for headers in ({}, {"Authorization": "Bearer pl_not_a_key"}, {"Authorization": "Basic x"}):
        body = CountingBody(UPLOAD)
        response = await _stream(postline, body, **headers)
        assert response.status_code == 401, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert body.pulled == 0


async def test_a_chunked_body_past_the_limit_is_413_as_soon_as_it_passes(
    postline_factory: Factory,
) -> None:
    postline = await postline_factory(engine=False, max_request_bytes=MB)
    body = CountingBody(UPLOAD)
    response = await _stream(postline, body, **postline.auth())
    assert response.status_code == 413, response.text
    assert response.json()["detail"] == f"the request body is larger than {MB} bytes"
    # Read up to the chunk that passed the limit, and not one more.
    assert body.pulled == MB + CHUNK
    listed = await postline.client.get("/v1/emails", headers=postline.auth())
    assert listed.json()["data"] == []


async def test_a_declared_length_past_the_limit_is_413_unread(postline_factory: Factory) -> None:
    postline = await postline_factory(engine=False, max_request_bytes=MB)
    body = CountingBody(2 * MB)
    response = await _stream(postline, body, **postline.auth(), **{"Content-Length": str(2 * MB)})
    assert response.status_code == 413, response.text
    assert body.pulled == 0


async def test_a_chunked_batch_within_the_limit_is_accepted(postline_factory: Factory) -> None:
    """The guard hands the application the body it read, in as many chunks as it came."""
    postline = await postline_factory(engine=False)
    batch = json.dumps([email(to=[f"r{i}@dest.test"], text="t" * 5000) for i in range(40)])
    raw = batch.encode()
    body = CountingBody(len(raw))
    pieces = [raw[i : i + 1000] for i in range(0, len(raw), 1000)]

    async def chunks() -> AsyncIterator[bytes]:
        for piece in pieces:
            body.pulled += len(piece)
            yield piece

    response = await postline.client.post(
        "/v1/emails/batch",
        content=chunks(),
        headers={"Content-Type": "application/json", **postline.auth()},
    )
    assert response.status_code == 202, response.text
    assert len(response.json()["data"]) == 40
    assert body.pulled == len(raw)


async def test_a_request_without_a_body_still_reaches_the_route(postline_factory: Factory) -> None:
    postline = await postline_factory(engine=False)
    assert (await postline.client.get("/healthz")).status_code == 200
    assert (await postline.client.get("/v1/emails")).status_code == 401
    listed = await postline.client.get("/v1/emails", headers=postline.auth())
    assert listed.status_code == 200, listed.text


# --- the real server ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def serving(factory: Factory, **settings: Any) -> AsyncIterator[PostlineUnderTest]:
    """``postline serve``'s HTTP server (API only) on a free loopback port."""
    port = free_port()
    postline = await factory(engine=False, http_addr=f"127.0.0.1:{port}", **settings)
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve(postline.services, engine=False, ready=ready, stop=stop))
    await asyncio.wait_for(ready.wait(), DEADLINE)
    try:
        yield postline
    finally:
        stop.set()
        await asyncio.wait_for(task, DEADLINE)


def port_of(postline: PostlineUnderTest) -> int:
    return postline.settings.http_host_port[1]


async def connect(postline: PostlineUnderTest) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port_of(postline))


async def test_an_anonymous_60_mb_chunked_upload_is_401_before_it_is_sent(
    postline_factory: Factory,
) -> None:
    async with serving(postline_factory) as postline:
        status, body, sent = await chunked_upload(port_of(postline), UPLOAD, {})
        assert status == 401, body
        assert body["status"] == 401
        assert sent < UPLOAD
        # Nothing of it was needed to answer: socket buffers at most, not the body.
        assert sent < postline.settings.request_limit


async def test_a_60_mb_chunked_upload_with_a_key_is_413_before_it_is_sent(
    postline_factory: Factory,
) -> None:
    async with serving(postline_factory) as postline:
        status, body, sent = await chunked_upload(port_of(postline), UPLOAD, postline.auth())
        assert status == 413, body
        assert body["detail"].startswith("the request body is larger than")
        assert sent < UPLOAD


async def test_headers_that_never_finish_are_cut_off_at_the_default_timeout(
    postline_factory: Factory,
) -> None:
    async with serving(postline_factory) as postline:
        assert postline.settings.http_header_timeout == 10.0
        # Half a request line on a new connection ...
        fresh_reader, fresh_writer = await connect(postline)
        fresh_writer.write(b"POST /v1/emails HT")
        # ... and on a kept-alive one after a full request (uvicorn's own keep-alive timer
        # stops at the first byte of the next request).
        kept_reader, kept_writer = await connect(postline)
        kept_writer.write(b"GET /healthz HTTP/1.1\r\nHost: postline\r\n\r\n")
        status, _, _ = await read_answer(kept_reader)
        assert status == 200
        kept_writer.write(b"GET /hea")
        # Meanwhile a normal client is served.
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port_of(postline)}") as client:
            assert (await client.get("/healthz")).status_code == 200
        assert await closed(fresh_reader)
        assert await closed(kept_reader)
        fresh_writer.close()
        kept_writer.close()


async def test_headers_sent_in_pieces_within_the_timeout_are_served(
    postline_factory: Factory,
) -> None:
    async with serving(postline_factory) as postline:
        reader, writer = await connect(postline)
        for piece in (b"GET /hea", b"lthz HTTP/1.1\r\n", b"Host: postline\r\n", b"\r\n"):
            writer.write(piece)
            await writer.drain()
        status, _, body = await read_answer(reader)
        assert (status, json.loads(body)) == (200, {"status": "ok"})
        writer.close()


async def test_endless_headers_are_431(postline_factory: Factory) -> None:
    async with serving(postline_factory) as postline:
        reader, writer = await connect(postline)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: postline\r\n")
        line = b"X-Filler: " + b"a" * 1000 + b"\r\n"
        for _ in range(MAX_HEADER_BYTES // len(line) + 2):
            writer.write(line)
        await writer.drain()
        status, headers, _ = await read_answer(reader)
        assert status == 431
        assert headers["connection"] == "close"
        assert await closed(reader)
        writer.close()


async def test_connections_past_the_cap_are_refused_and_served_again_once_one_closes(
    postline_factory: Factory,
) -> None:
    async with serving(postline_factory, http_max_connections=3) as postline:
        held = [await connect(postline) for _ in range(3)]
        for _, writer in held:
            writer.write(b"GET /healthz HTTP/1.1\r\n")  # slow clients, mid-headers
            await writer.drain()
        reader, writer = await connect(postline)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: postline\r\n\r\n")
        status, headers, _ = await read_answer(reader)
        assert status == 503
        assert headers["connection"] == "close"
        assert await closed(reader)
        writer.close()
        held.pop()[1].close()
        url = f"http://127.0.0.1:{port_of(postline)}/healthz"

        async def served() -> bool:
            async with httpx.AsyncClient() as client:
                return (await client.get(url)).status_code == 200

        await poll(served, timeout=DEADLINE, what="a request served once a slot is free")
        for _, held_writer in held:
            held_writer.close()


async def test_pipelined_and_kept_alive_requests_are_served(postline_factory: Factory) -> None:
    """The header clock stops and starts per request, never in the middle of one."""
    async with serving(postline_factory) as postline:
        reader, writer = await connect(postline)
        request = b"GET /healthz HTTP/1.1\r\nHost: postline\r\n\r\n"
        writer.write(request * 3)
        for _ in range(3):
            status, _, body = await read_answer(reader)
            assert (status, json.loads(body)) == (200, {"status": "ok"})
        writer.write(request)
        assert (await read_answer(reader))[0] == 200
        writer.close()
