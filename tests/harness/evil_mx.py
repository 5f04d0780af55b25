"""A raw SMTP server that misbehaves on purpose (not aiosmtpd: it must be able to lie).

``EvilMX`` speaks just enough SMTP to lead a client to the chosen stage
(``greeting``, ``ehlo``, ``mail``, ``rcpt`` or ``data-end``) and answers there
with a hostile reply instead of the normal one:

- ``huge_line``: one reply line of more than 4 KB (ending in multi-byte characters);
- ``binary``: NUL, invalid UTF-8, ANSI escapes, C1 controls, a bare CR, U+2028;
- ``crlf_injection``: a 550 whose continuation lines carry another code, followed by
  extra lines that look like a Postline log line (with the real email id, taken from
  the bounce address in MAIL FROM) and a forged "250 queued";
- ``multiline_flood``: 20,000 ``250-`` continuation lines (1.3 MB) before the last line;
- ``endless_flood``: ``250-`` continuation lines that never end;
- ``slow_drip``: the normal reply, one byte every ``drip_interval`` seconds.

``replies`` overrides what the other stages answer (raw bytes, CR/LF included), and
``EvilMX(None, None, replies=...)`` only says those: a server whose EHLO keywords, say,
are the hostile part.

It runs in the test's event loop on a loopback address, records every session and
every command line it received, and ``stop()`` hangs up on every client (it never
waits for one). ``async with EvilMX(...) as mx:`` starts and stops it.

``delivered`` lists the recipients of each message whose positive end-of-data reply
went out whole (what the server "has"); ``set_fault`` changes or ends the misbehaviour
while clients keep coming, so a test can end an outage.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal, get_args

from tests.harness.raw_mx import RawMX

__all__ = ["MODES", "STAGES", "EvilMX", "EvilSession", "Mode", "Stage", "hostile_reply"]

Stage = Literal["greeting", "ehlo", "mail", "rcpt", "data-end"]
Mode = Literal[
    "huge_line", "binary", "crlf_injection", "multiline_flood", "endless_flood", "slow_drip"
]
STAGES: tuple[Stage, ...] = get_args(Stage)
MODES: tuple[Mode, ...] = get_args(Mode)

#: Normal answers at each stage (what a well-behaved MX says).
NORMAL: dict[Stage, bytes] = {
    "greeting": b"220 evil.test ESMTP ready\r\n",
    "ehlo": b"250-evil.test greets you\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n",
    "mail": b"250 2.1.0 sender ok\r\n",
    "rcpt": b"250 2.1.5 recipient ok\r\n",
    "data-end": b"250 2.0.0 message accepted\r\n",
}

#: More than 4 KB on one line; the bytes around offset 1024 are a 3-byte character,
#: so a cut at 1024 bytes that ignores character boundaries leaves invalid UTF-8.
HUGE_LINE = b"550 5.1.1 " + ("A" * 1013 + "\u20ac" * 1100).encode() + b"\r\n"

BINARY = (
    b"550 5.1.1 \x00nul \xff\xfe invalid \xc3\x28 utf8 \xed\xa0\x80 surrogate "
    b"\x1b[31mred\x1b[0m \x1b]0;title\x07 \xc2\x85nel \xc2\x9bcsi \x7fdel \x0bvt\x0cff "
    b"bare\rCR \xe2\x80\xa8ls \x9b raw-c1 \x08\x08\x08backspace\tend\r\n"
)

#: ``{email_id}`` becomes the email id from the bounce address in MAIL FROM (Postline's
#: ``bounces+<email id>-<token>@...``), so the forged log line names the real email.
CRLF_INJECTION = (
    b"550-5.1.1 mailbox unavailable\r\n"
    b"250-2.0.0 forged continuation with another code\r\n"
    b"550 5.1.1 bad\r\n"
    b"INFO postline.delivery outcome email_id={email_id} recipient_id=x status=delivered\r\n"
    b"X-Injected-Header: yes\r\n"
    b"250 2.0.0 Ok: queued as INJECTED\r\n"
)

FLOOD_LINES = 20_000
_FLOOD_LINE = b"250-" + b"x" * 60 + b"\r\n"
_BOUNCE_ID = re.compile(rb"bounces\+([A-Za-z0-9_]+)[-@]")
_RCPT_ADDRESS = re.compile(rb"<([^>]*)>")


def hostile_reply(mode: Mode, sender: bytes = b"") -> bytes:
    """The complete hostile reply of a mode that sends one (not the floods or the drip)."""
    if mode == "huge_line":
        return HUGE_LINE
    if mode == "binary":
        return BINARY
    if mode == "crlf_injection":
        match = _BOUNCE_ID.search(sender)
        return CRLF_INJECTION.replace(b"{email_id}", match.group(1) if match else b"unknown")
    if mode == "multiline_flood":
        return _FLOOD_LINE * FLOOD_LINES + b"250 2.0.0 end of flood\r\n"
    raise ValueError(f"{mode} has no single reply")


@dataclass
class EvilSession:
    """One client connection: the command lines received (CRLF stripped, at most 512 bytes)."""

    number: int
    commands: list[bytes] = field(default_factory=list)
    mail_from: bytes = b""
    triggered: bool = False
    closed: bool = False
    rcpts: list[str] = field(default_factory=list)  # of the transaction under way
    delivered: list[list[str]] = field(default_factory=list)  # per accepted message

    @property
    def verbs(self) -> list[str]:
        return [
            c.split(b" ", 1)[0].split(b":", 1)[0].upper().decode("ascii", "replace")
            for c in self.commands
        ]


class EvilMX(RawMX[EvilSession]):
    def __init__(
        self,
        mode: Mode | None,
        stage: Stage | None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        drip_interval: float = 0.5,
        replies: dict[Stage, bytes] | None = None,
    ) -> None:
        if (
            (mode is None) != (stage is None)
            or mode not in (*MODES, None)
            or stage not in (*STAGES, None)
        ):
            raise ValueError(f"bad mode/stage {mode!r}/{stage!r}")
        super().__init__(host, port, EvilSession)
        self.replies: dict[Stage, bytes] = {**NORMAL, **(replies or {})}
        """What the other stages answer (raw bytes, sent as given): NORMAL unless overridden."""
        self.mode = mode
        self.stage = stage
        self.drip_interval = drip_interval
        self.bytes_sent = 0

    # ------------------------------------------------------------------ records

    @property
    def triggered(self) -> int:
        """How many times the hostile reply was (at least partly) sent."""
        return sum(s.triggered for s in self.sessions)

    @property
    def commands(self) -> list[bytes]:
        return [c for s in self.sessions for c in s.commands]

    @property
    def delivered(self) -> list[list[str]]:
        """Recipients of every message whose 2xx end-of-data reply was sent in full."""
        return [rcpts for s in self.sessions for rcpts in s.delivered]

    def copies(self) -> Counter[str]:
        """Lower-case recipient address -> messages delivered for it."""
        return Counter(a.lower() for rcpts in self.delivered for a in rcpts)

    def set_fault(self, mode: Mode | None, stage: Stage | None) -> None:
        """Misbehave differently from the next reply on, or (None, None) behave again."""
        if (mode is None) != (stage is None) or mode not in (*MODES, None):
            raise ValueError(f"bad mode/stage {mode!r}/{stage!r}")
        if stage not in (*STAGES, None):
            raise ValueError(f"bad stage {stage!r}")
        self.mode, self.stage = mode, stage

    def __repr__(self) -> str:
        return (
            f"EvilMX({self.mode}@{self.stage} {self.host}:{self.port} "
            f"sessions={[s.verbs for s in self.sessions]})"
        )

    # ------------------------------------------------------------------ protocol

    async def _converse(
        self, session: EvilSession, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await self._answer(session, writer, "greeting")
        while line := await reader.readline():
            session.commands.append(line.rstrip(b"\r\n")[:512])
            verb = line[:4].upper()
            if verb == b"EHLO":
                await self._answer(session, writer, "ehlo")
            elif verb == b"HELO":
                await self._send(writer, b"250 evil.test\r\n")
            elif verb == b"MAIL":
                session.mail_from = line
                session.rcpts = []
                await self._answer(session, writer, "mail")
            elif verb == b"RCPT":
                if await self._answer(session, writer, "rcpt"):
                    found = _RCPT_ADDRESS.search(line)
                    if found:
                        session.rcpts.append(found.group(1).decode("utf-8", "replace"))
            elif verb == b"DATA":
                await self._send(writer, b"354 end data with <CR><LF>.<CR><LF>\r\n")
                while (await reader.readline()) not in (b".\r\n", b""):
                    pass
                if await self._answer(session, writer, "data-end"):
                    session.delivered.append(list(session.rcpts))
                session.rcpts = []
            elif verb in (b"RSET", b"NOOP"):
                session.rcpts = []
                await self._send(writer, b"250 2.0.0 ok\r\n")
            elif verb == b"QUIT":
                await self._send(writer, b"221 2.0.0 bye\r\n")
                return
            else:
                await self._send(writer, b"502 5.5.2 command not recognized\r\n")

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        self.bytes_sent += len(data)
        await writer.drain()

    async def _answer(
        self, session: EvilSession, writer: asyncio.StreamWriter, stage: Stage
    ) -> bool:
        """Send this stage's answer; True when it was the normal (or dripped) reply, a 2xx,
        and went out whole. Hostile replies count as refusals, whatever their code."""
        normal = self.replies[stage]
        if self.mode is None or stage != self.stage:
            await self._send(writer, normal)
            return normal.startswith(b"2")
        session.triggered = True
        if self.mode == "slow_drip":
            for byte in normal:
                if writer.is_closing():
                    return False
                await self._send(writer, bytes([byte]))
                await asyncio.sleep(self.drip_interval)
            return normal.startswith(b"2")
        if self.mode == "endless_flood":
            chunk = _FLOOD_LINE * 256
            while not writer.is_closing():
                await self._send(writer, chunk)
                await asyncio.sleep(0.001)  # let the client (same loop) run
        else:
            await self._send(writer, hostile_reply(self.mode, session.mail_from))
        return False
