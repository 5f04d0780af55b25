"""Open SMTP sessions kept per MX address and reused across jobs.

A session that ended its last transaction cleanly goes back to the pool and
carries the next message to the same host (a new MAIL FROM starts a new
transaction; RSET cleared any aborted one). Sessions retire after
``max_messages`` or ``idle_seconds`` — the way Postfix's connection cache does.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass, field

import aiosmtplib


@dataclass(frozen=True)
class SmtpSettings:
    helo_name: str
    connect_timeout: float
    command_timeout: float
    max_messages_per_session: int = 100
    idle_seconds: float = 30.0


@dataclass
class Session:
    client: aiosmtplib.SMTP
    key: tuple[str, int]
    messages: int = 0
    idle_since: float = field(default_factory=time.monotonic)
    reused: bool = False


class SessionPool:
    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings
        self._idle: defaultdict[tuple[str, int], list[Session]] = defaultdict(list)
        self.opened = 0

    async def session(self, address: str, port: int, *, fresh: bool = False) -> Session:
        """An open session to address:port: an idle one if there is one, else a new one."""
        key = (address, port)
        idle = self._idle[key]
        while idle and not fresh:
            candidate = idle.pop()
            too_old = time.monotonic() - candidate.idle_since > self.settings.idle_seconds
            if too_old or not candidate.client.is_connected:
                await close_session(candidate.client)
                continue
            candidate.reused = True
            return candidate
        client = aiosmtplib.SMTP(
            hostname=address,
            port=port,
            local_hostname=self.settings.helo_name,
            timeout=self.settings.command_timeout,
            start_tls=None,  # opportunistic: upgrade when the server offers it
            validate_certs=False,
        )
        await client.connect(timeout=self.settings.connect_timeout)
        self.opened += 1
        return Session(client, key)

    async def give_back(self, session: Session, *, clean: bool) -> None:
        """Keep a session whose transaction ended cleanly; close anything else."""
        session.messages += 1
        keep = (
            clean
            and session.client.is_connected
            and session.messages < self.settings.max_messages_per_session
        )
        if not keep:
            await close_session(session.client)
            return
        session.idle_since = time.monotonic()
        self._idle[session.key].append(session)

    async def prune(self) -> None:
        """Close sessions idle for too long (housekeeping)."""
        now = time.monotonic()
        for key, sessions in list(self._idle.items()):
            keep = [s for s in sessions if now - s.idle_since <= self.settings.idle_seconds]
            for stale in sessions:
                if stale not in keep:
                    await close_session(stale.client)
            self._idle[key] = keep

    async def close(self) -> None:
        for sessions in self._idle.values():
            for session in sessions:
                await close_session(session.client)
        self._idle.clear()


async def close_session(client: aiosmtplib.SMTP) -> None:
    """QUIT politely, unless we are being cancelled (shutdown): then just hang up."""
    if not client.is_connected:
        return
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        client.close()
        return
    try:
        await asyncio.wait_for(client.quit(), timeout=5)
    except (TimeoutError, aiosmtplib.SMTPException, OSError):
        client.close()
