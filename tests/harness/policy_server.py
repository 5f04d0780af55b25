"""A tiny HTTPS server on loopback that serves an MTA-STS policy (or fails on purpose),
and takes TLS reports (RFC 8460 POSTs: their bodies are kept in ``posted``).

One request per connection, HTTP/1.1, in the test's event loop. What it answers
is set on the instance and may change while it runs:

* ``policy``: the body of ``/.well-known/mta-sts.txt`` (``text/plain``);
* ``status``/``content_type``/``headers``: the reply's, to test refusals
  (a 301 with a ``Location`` must not be followed);
* ``failing``: close the connection without any answer.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field


@dataclass
class PolicyServer:
    context: ssl.SSLContext
    host: str = "127.0.0.1"
    policy: str = ""
    status: int = 200
    content_type: str = "text/plain"
    headers: dict[str, str] = field(default_factory=dict)
    failing: bool = False
    #: (path, Host header) of every request read.
    requests: list[tuple[str, str]] = field(default_factory=list)
    #: (Content-Type, body) of every POST.
    posted: list[tuple[str, bytes]] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, 0, ssl=self.context)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> PolicyServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def serve(self, mode: str, *mx: str, max_age: int = 86400) -> None:
        """Serve a well-formed policy."""
        lines = [
            "version: STSv1",
            f"mode: {mode}",
            *(f"mx: {m}" for m in mx),
            f"max_age: {max_age}",
        ]
        self.policy = "\r\n".join(lines) + "\r\n"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            path = lines[0].split(" ")[1] if len(lines[0].split(" ")) > 1 else ""
            host = next(
                (
                    line.split(":", 1)[1].strip()
                    for line in lines
                    if line.lower().startswith("host:")
                ),
                "",
            )
            self.requests.append((path, host))
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (line.partition(":") for line in lines[1:] if ":" in line)
            }
            if lines[0].startswith("POST"):
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.posted.append((headers.get("content-type", ""), body))
            if self.failing:
                return
            answer = self.policy.encode() if self.status == 200 else b"no"
            extra = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
            writer.write(
                f"HTTP/1.1 {self.status} X\r\nContent-Type: {self.content_type}\r\n"
                f"Content-Length: {len(answer)}\r\n{extra}Connection: close\r\n\r\n".encode()
                + answer
            )
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()
