"""HTTP/1.1 spoken by hand over a socket, for what a well-behaved client never does:
half a request line, endless headers, a chunked upload that keeps going after the
answer. Shared by the in-loop server tests and the ``postline serve`` acceptance tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

CHUNK = 64 * 1024
#: Generous: a loaded machine is slow, and a test never asserts how long anything took.
DEADLINE = 120.0


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-cased names) and body of one answer."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines if line)
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, body


async def closed(reader: asyncio.StreamReader) -> bool:
    """True once the server ended the connection (EOF or a reset)."""
    try:
        return await asyncio.wait_for(reader.read(), DEADLINE) is not None
    except ConnectionError:
        return True


async def chunked_upload(
    port: int, total: int, auth: dict[str, str], path: str = "/v1/emails/batch"
) -> tuple[int, dict[str, Any], int]:
    """POST ``total`` bytes chunked to 127.0.0.1:``port`` while listening for the answer:
    the answer's status and JSON body, and how many bytes had been handed to the socket
    when it came. Once answered, the server must read nothing more and end the
    connection (after its grace period)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = [
        f"POST {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Content-Type: application/json",
        "Transfer-Encoding: chunked",
        *(f"{name}: {value}" for name, value in auth.items()),
    ]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
    sent = 0
    framed = f"{CHUNK:x}\r\n".encode() + b"x" * CHUNK + b"\r\n"

    async def send_all() -> None:
        nonlocal sent
        while sent < total:
            writer.write(framed)
            await writer.drain()
            sent += CHUNK
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    sender = asyncio.create_task(send_all())
    try:
        status, _, body = await read_answer(reader)
        sent_when_answered = sent
        sender.cancel()
        assert await closed(reader)
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await sender
        writer.close()
    return status, json.loads(body), sent_when_answered
