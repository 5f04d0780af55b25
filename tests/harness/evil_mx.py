"""A raw SMTP server that misbehaves on purpose (not aiosmtpd: it must be able to lie).

It answers just enough SMTP to reach the chosen stage, then sends a hostile
reply there: a 4 KB line, binary bytes, CR/LF-injected lines, a flood of
continuation lines, or a reply dripped one byte at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Literal

Stage = Literal["greeting", "ehlo", "rcpt"]
Mode = Literal["huge_line", "binary", "crlf_injection", "multiline_flood", "slow_drip"]

HOSTILE: dict[str, bytes] = {
    "huge_line": b"550 5.1.1 " + b"A" * 4096 + b"\r\n",
    "binary": b"550 5.1.1 \x00\xff\xfe\x1b[31mred\x1b[0m \xc3\x28 bad\x07\r\n",
    "crlf_injection": (
        b"550 5.1.1 bad\r\nINFO postline.delivery outcome status=delivered\r\n250 2.0.0 fake\r\n"
    ),
    "multiline_flood": b"".join(b"250-line %d\r\n" % i for i in range(20_000)) + b"250 ok\r\n",
}


class EvilMX:
    def __init__(self, mode: Mode, stage: Stage, host: str = "127.0.0.1") -> None:
        self.mode = mode
        self.stage = stage
        self.host = host
        self.port = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._session, self.host, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), timeout=2)

    async def _reply(self, writer: asyncio.StreamWriter, stage: Stage, normal: bytes) -> None:
        if stage != self.stage:
            writer.write(normal)
            await writer.drain()
            return
        if self.mode == "slow_drip":
            for byte in normal:  # one byte every half second: far slower than any timeout
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.5)
            return
        writer.write(HOSTILE[self.mode])
        await writer.drain()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            await self._reply(writer, "greeting", b"220 evil.test ESMTP\r\n")
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    await self._reply(writer, "ehlo", b"250-evil.test\r\n250 8BITMIME\r\n")
                elif verb == b"RCPT":
                    await self._reply(writer, "rcpt", b"250 2.1.5 ok\r\n")
                elif verb == b"DATA":
                    writer.write(b"354 go on\r\n")
                    await writer.drain()
                    while (await reader.readline()) not in (b".\r\n", b""):
                        pass
                    writer.write(b"250 2.0.0 ok\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    await writer.drain()
                    break
                else:
                    writer.write(b"250 ok\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
