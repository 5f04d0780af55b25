"""An aiosmtpd server in the caller's event loop: the shape every SMTP server of Postline
shares (the sandbox simulator, the inbound MX), so that starting on an ephemeral port
and stopping without hanging on a stuck client are written once."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiosmtpd.smtp import SMTP

log = logging.getLogger("postline")

#: Seconds :meth:`LoopSmtpServer.stop` waits for open sessions before leaving them.
STOP_SECONDS = 2.0


class LoopSmtpServer:
    """Subclasses say which protocol serves a connection (:meth:`protocol`) and what the
    server is called in the log (``label``)."""

    label = "SMTP server"

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port  # 0: an ephemeral port, known after start()
        self._server: asyncio.Server | None = None

    def protocol(self, loop: asyncio.AbstractEventLoop) -> SMTP:
        raise NotImplementedError

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: self.protocol(loop), self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("%s listening on %s:%d", self.label, self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), timeout=STOP_SECONDS)
            self._server = None
