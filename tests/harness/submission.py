"""The submission port of a Postline under test, and clients that talk to it for real.

``running_submission(pl)`` starts the real listeners (``SubmissionServer``) in the
test's event loop on free loopback ports. Clients: Python's ``smtplib`` (blocking,
so it runs in a thread while the loop serves it) and :class:`RawSession`, a raw
socket for what no well-behaved client sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

from postline.submission.server import Listening, SubmissionServer
from tests.harness.postline import PostlineUnderTest

#: How long a raw session waits for one reply before the test fails.
REPLY_TIMEOUT = 30.0


@contextlib.asynccontextmanager
async def running_submission(pl: PostlineUnderTest) -> AsyncIterator[Listening]:
    server = SubmissionServer(pl.services)
    listening = await server.start()
    try:
        yield listening
    finally:
        await server.stop(0)


def client_context(cert_file: Path) -> ssl.SSLContext:
    """A client that trusts exactly the port's (self-signed) certificate."""
    return ssl.create_default_context(cafile=str(cert_file))


class RawSession:
    """An SMTP client that writes whatever bytes it is told and reads replies whole."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, address: tuple[str, int]) -> RawSession:
        reader, writer = await asyncio.open_connection(*address, limit=1 << 20)
        session = cls(reader, writer)
        greeting = await session.reply()
        assert greeting.startswith("220 "), greeting
        return session

    async def reply(self) -> str:
        """One reply, its lines joined with newlines ("" when the server closed)."""
        lines: list[str] = []
        while True:
            raw = await asyncio.wait_for(self.reader.readline(), REPLY_TIMEOUT)
            if not raw:
                return "\n".join(lines)
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            lines.append(line)
            if not re.match(r"^\d{3}-", line):
                return "\n".join(lines)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def command(self, line: str | bytes) -> str:
        data = line.encode() if isinstance(line, str) else line
        await self.send(data + b"\r\n")
        return await self.reply()

    async def closed(self) -> bool:
        """Whether the server has closed the connection (EOF), reading what is left."""
        rest = await asyncio.wait_for(self.reader.read(), REPLY_TIMEOUT)
        return rest == b"" or self.reader.at_eof()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


def smtplib_submit(
    address: tuple[str, int],
    key: str,
    message: bytes,
    sender: str,
    recipients: list[str],
    *,
    cert_file: Path,
    starttls: bool = True,
    implicit_tls: bool = False,
    mechanism: str = "PLAIN",
) -> tuple[int, str]:
    """Send one message the way an application's mailer does; the DATA reply.

    Blocking: call it through ``asyncio.to_thread``. Raises smtplib's exceptions for a
    refused AUTH, MAIL or RCPT, as an application would see them.
    """
    import smtplib

    context = client_context(cert_file)
    client: smtplib.SMTP
    if implicit_tls:
        client = smtplib.SMTP_SSL(*address, context=context, timeout=REPLY_TIMEOUT)
    else:
        client = smtplib.SMTP(*address, timeout=REPLY_TIMEOUT)
    with client:
        client.ehlo("app.example.test")
        if starttls:
            client.starttls(context=context)
            client.ehlo("app.example.test")
        client.user, client.password = "anything", key
        client.auth(mechanism, getattr(client, f"auth_{mechanism.lower()}"))
        code, reply = client.mail(sender)
        if code != 250:
            raise smtplib.SMTPSenderRefused(code, reply, sender)
        for recipient in recipients:
            code, reply = client.rcpt(recipient)
            if code != 250:
                raise smtplib.SMTPRecipientsRefused({recipient: (code, reply)})
        code, reply = client.data(message)
        if code != 250:
            raise smtplib.SMTPDataError(code, reply)
        return code, reply.decode()
