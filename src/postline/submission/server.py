"""The submission port's listeners: STARTTLS on ``POSTLINE_SMTP_ADDR``, implicit TLS on
``POSTLINE_SUBMISSION_TLS_ADDR`` when set.

Started by ``serve`` and ``api`` (the processes that accept mail) in the
supervisor's loop, and stopped with them: the listeners close first, so no new
session starts; sessions in flight get the shutdown timeout to finish (a
message being accepted is answered), then whatever is left is told ``421``
and closed. A client that hears ``421`` keeps its message and retries.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass
from typing import Any

from postline.app import Services
from postline.config import ConfigError, Settings, parse_host_port
from postline.keys import Principal
from postline.ratelimit import RateLimiter
from postline.sockets import listen
from postline.submission.handler import SubmissionHandler
from postline.submission.protocol import SessionLimits, SubmissionSMTP
from postline.submission.tls import TlsMaterial, server_tls

log = logging.getLogger("postline.submission")

SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"


@dataclass(frozen=True)
class Listening:
    """Where the port listens, for the start-up line."""

    starttls: tuple[str, int]
    implicit_tls: tuple[str, int] | None
    tls: TlsMaterial


def bind(addr: str, label: str) -> socket.socket:
    """Bind here, so a taken port is a one-line ConfigError naming its setting."""
    return listen(*parse_host_port(addr), label)


def limits_from(settings: Settings) -> SessionLimits:
    return SessionLimits(
        idle_timeout=settings.submission_idle_timeout,
        max_session_seconds=settings.submission_max_session_seconds,
        max_errors=settings.submission_max_errors,
        loopback_plaintext_auth=settings.submission_loopback_plaintext_auth,
    )


class SubmissionServer:
    """The listeners and their sessions, in the caller's event loop."""

    def __init__(self, services: Services) -> None:
        self.services = services
        settings = services.settings
        self.handler = SubmissionHandler(
            services.acceptor,
            RateLimiter.from_settings(settings, services.queue, services.metrics),
            services.metrics,
            max_recipients=settings.submission_max_recipients,
        )
        self._servers: list[asyncio.Server] = []
        self._sessions: set[SubmissionSMTP] = set()

    async def _verify(self, secret: str) -> Principal | None:
        """The key's principal if it may send: a key without the ``send`` scope (a
        read-only key, say) is refused at AUTH as a wrong password is."""
        found = await self.services.authenticator.authenticate(secret)
        return found if found is not None and "send" in found.scopes else None

    def _factory(self, tls: TlsMaterial, *, implicit: bool) -> Any:
        settings = self.services.settings
        loop = asyncio.get_running_loop()

        def make() -> SubmissionSMTP:
            session = SubmissionSMTP(
                self.handler,
                limits=limits_from(settings),
                verify=self._verify,
                implicit_tls=implicit,
                sessions=self._sessions,
                hostname=settings.hostname,
                ident="Postline ESMTP submission",
                data_size_limit=settings.max_message_bytes,
                enable_SMTPUTF8=True,
                tls_context=None if implicit else tls.context,
                auth_exclude_mechanism=["CRAM-MD5"],
                loop=loop,
            )
            return session

        return make

    async def start(self) -> Listening:
        """Bind and listen; a ConfigError (one line) when a port or the TLS files fail."""
        settings = self.services.settings
        tls = await asyncio.to_thread(
            server_tls,
            settings.data_dir,
            settings.hostname,
            settings.submission_tls_cert,
            settings.submission_tls_key,
        )
        loop = asyncio.get_running_loop()
        plain = bind(settings.smtp_addr, "POSTLINE_SMTP_ADDR")
        implicit = None
        try:
            if settings.submission_tls_addr:
                implicit = bind(settings.submission_tls_addr, "POSTLINE_SUBMISSION_TLS_ADDR")
        except ConfigError:
            plain.close()
            raise
        self._servers.append(
            await loop.create_server(self._factory(tls, implicit=False), sock=plain)
        )
        implicit_at = None
        if implicit is not None:
            self._servers.append(
                await loop.create_server(
                    self._factory(tls, implicit=True), sock=implicit, ssl=tls.context
                )
            )
            implicit_at = _address(implicit)
        listening = Listening(_address(plain), implicit_at, tls)
        log.info(
            "SMTP submission listening on %s:%d%s",
            *listening.starttls,
            f" and {listening.implicit_tls[0]}:{listening.implicit_tls[1]} (implicit TLS)"
            if listening.implicit_tls
            else "",
        )
        return listening

    async def stop(self, grace: float) -> None:
        """Stop listening, give sessions ``grace`` seconds, then close the rest."""
        for server in self._servers:
            server.close()
        self._servers.clear()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self._sessions and loop.time() < deadline:
            if not any(s.busy for s in self._sessions):
                break
            await asyncio.sleep(0.05)
        for session in list(self._sessions):
            session.close_with(SHUTTING_DOWN)
        # The closes complete in the loop's next turns.
        for _ in range(20):
            if not self._sessions:
                break
            await asyncio.sleep(0.01)


def _address(sock: socket.socket) -> tuple[str, int]:
    name = sock.getsockname()
    return str(name[0]), int(name[1])
