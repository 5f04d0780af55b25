"""A raw SMTP server that answers a pipelined batch only once it has read all of it.

``BatchMX`` advertises PIPELINING (RFC 2920) and holds back its replies to MAIL
and RCPT until DATA arrives. Then it sends every held reply and the DATA reply
in one write. Only a client that really pipelines gets past MAIL: one that
waits for each reply waits forever. And the client must read several replies
that arrive in one chunk.

The replies are raw bytes, sent as given, so a test can make them lie: extra
replies, a 354 to RCPT, bytes after the 354, a flood. Each session records its
command lines and every message body it received after a 354 (a lone dot is
``b""``). ``stop()`` hangs up on every client. ``async with BatchMX(...) as mx:``
starts and stops it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from tests.harness.raw_mx import RawMX

__all__ = ["BatchMX", "BatchSession"]

EHLO = b"250-batch.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n"


@dataclass
class BatchSession:
    number: int
    commands: list[bytes] = field(default_factory=list)  # CRLF stripped, at most 512 bytes
    bodies: list[bytes] = field(default_factory=list)  # what came between a 354 and the dot
    closed: bool = False

    @property
    def verbs(self) -> list[str]:
        return [c.split(b" ", 1)[0].upper().decode("ascii", "replace") for c in self.commands]


class BatchMX(RawMX[BatchSession]):
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        mail: bytes = b"250 2.1.0 sender ok\r\n",
        rcpt: bytes = b"250 2.1.5 recipient ok\r\n",
        rcpts: dict[str, bytes] | None = None,
        data: bytes = b"354 end data with <CR><LF>.<CR><LF>\r\n",
        end: bytes = b"250 2.0.0 queued\r\n",
    ) -> None:
        super().__init__(host, port, BatchSession)
        self.mail = mail
        self.rcpt = rcpt
        """The reply to RCPT for addresses not in ``rcpts`` (lower-case address -> reply)."""
        self.rcpts = {address.lower(): reply for address, reply in (rcpts or {}).items()}
        self.data = data
        """The reply to DATA; the body is read only if it starts with 354."""
        self.end = end

    @property
    def bodies(self) -> list[bytes]:
        return [body for s in self.sessions for body in s.bodies]

    def __repr__(self) -> str:
        return f"BatchMX({self.host}:{self.port} sessions={[s.verbs for s in self.sessions]})"

    async def _converse(
        self, session: BatchSession, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        held: list[bytes] = []

        async def send(reply: bytes) -> None:
            writer.write(b"".join(held) + reply)
            held.clear()
            await writer.drain()

        await send(b"220 batch.test ESMTP\r\n")
        while line := await reader.readline():
            session.commands.append(line.rstrip(b"\r\n")[:512])
            verb = line[:4].upper()
            if verb == b"EHLO":
                await send(EHLO)
            elif verb == b"MAIL":
                held.append(self.mail)
            elif verb == b"RCPT":
                address = line.partition(b"<")[2].partition(b">")[0].decode(errors="replace")
                held.append(self.rcpts.get(address.lower(), self.rcpt))
            elif verb == b"DATA":
                await send(self.data)
                if self.data.startswith(b"354"):
                    body = bytearray()
                    while (chunk := await reader.readline()) != b".\r\n":
                        if not chunk:
                            return  # hung up before the end of the message
                        body += chunk
                    session.bodies.append(bytes(body))
                    await send(self.end)
            elif verb in (b"RSET", b"NOOP"):
                await send(b"250 2.0.0 ok\r\n")
            elif verb == b"QUIT":
                await send(b"221 2.0.0 bye\r\n")
                return
            else:
                await send(b"502 5.5.2 command not recognized\r\n")
