"""A programmable SMTP server (aiosmtpd) that runs inside the test's own event loop.

``FakeMX`` plays the role of a remote MX host for integration tests: it accepts real SMTP
sessions on a loopback address, records what it received and can be told how to answer
(per-recipient rejects, temporary failures, stalls, dropped connections, ...).

Reply strings are complete SMTP reply lines such as ``"550 5.1.1 user unknown"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import re
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, Literal

from aiosmtpd.smtp import SMTP, Envelope, Session

__all__ = [
    "DEFAULT_DATA_REPLY",
    "DEFAULT_MAIL_REPLY",
    "DEFAULT_RCPT_REPLY",
    "Chunk",
    "FakeMX",
    "FakeMXFactory",
    "Received",
    "Stage",
    "start_mx_group",
]

Stage = Literal["greeting", "mail", "rcpt", "data"]

DEFAULT_MAIL_REPLY = "250 2.1.0 OK"
DEFAULT_RCPT_REPLY = "250 2.1.5 OK"
DEFAULT_DATA_REPLY = "250 2.0.0 OK queued"
DATA_SIZE_LIMIT = 64 * 1024 * 1024

_REPLY_RE = re.compile(r"^[2-5][0-9][0-9](?:[ -].*)?$", re.DOTALL)
_STAGES: tuple[str, ...] = ("greeting", "mail", "rcpt", "data")


def _check_replies(replies: Sequence[str]) -> list[str]:
    if not replies:
        raise ValueError("at least one reply is required")
    for reply in replies:
        if not _REPLY_RE.match(reply):
            raise ValueError(f"not an SMTP reply line: {reply!r}")
    return list(replies)


def _next_reply(queue: list[str] | None, default: str) -> str:
    """Pop the next programmed reply; the last one repeats forever."""
    if not queue:
        return default
    if len(queue) > 1:
        return queue.pop(0)
    return queue[0]


def _is_positive(reply: str) -> bool:
    return reply.startswith("2")


def _format_peer(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = str(peer[0]), peer[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(peer)


@dataclass
class Received:
    """One message accepted by a FakeMX (or, in ``FakeMX.dropped``, swallowed by it)."""

    mail_from: str
    """Envelope sender as given in MAIL FROM (``"<>"`` for the null reverse-path)."""
    rcpt_tos: list[str]
    """Accepted recipients only, in the order they were accepted."""
    data: bytes
    """The message exactly as received (CRLF line endings, dot-stuffing removed)."""
    peer: str
    """``"ip:port"`` of the client."""
    mail_options: list[str] = field(default_factory=list)
    """ESMTP parameters of MAIL FROM, upper-cased (e.g. ``["SMTPUTF8", "BODY=8BITMIME"]``)."""
    tls: bool = False
    """Whether the session had switched to TLS (STARTTLS) before this message."""
    helo: str | None = None
    """The name the client gave in EHLO/HELO."""
    session: int = 0
    """1-based number of the SMTP session (connection) that carried the message."""
    at: float = field(default_factory=time.monotonic)
    """When the body was in, on ``time.monotonic()`` (the event loop's clock)."""

    @property
    def message(self) -> EmailMessage:
        """``data`` parsed with ``email.policy.default`` (line endings normalised to ``\\n``,
        so ``get_content()`` is plain text; use ``data`` for byte-exact checks such as DKIM)."""
        raw = self.data.replace(b"\r\n", b"\n")
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class Chunk:
    """What one read of a FakeMX session delivered: the bytes as they came off the socket.

    A client that pipelines (RFC 2920) sends MAIL, its RCPTs and DATA in one write, so they
    arrive in one chunk; a client that waits for each reply cannot put two of them in one.
    """

    session: int
    """1-based number of the session (as in ``Received.session``)."""
    replies_sent: int
    """Complete replies (the greeting included) the server had sent before the chunk came."""
    data: bytes
    """The chunk, cut at 512 bytes."""

    @property
    def verbs(self) -> list[str]:
        """The first word of each line (``"MAIL"``, ``"RCPT"``, ...); body lines give junk."""
        return [
            line.split(b" ", 1)[0].split(b":", 1)[0].upper().decode("ascii", "replace")
            for line in self.data.split(b"\r\n")
            if line
        ]


class _FakeSMTP(SMTP):
    """aiosmtpd session protocol with connection tracking and greeting control."""

    def __init__(self, mx: FakeMX, handler: _Handler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.fake_mx = mx
        self.session_number = 0
        self._greeted = False
        self._replies_sent = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.session_number = self.fake_mx._session_opened(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self.fake_mx._session_closed(self)
        super().connection_lost(error)

    def data_received(self, data: bytes) -> None:
        self.fake_mx.chunks.append(Chunk(self.session_number, self._replies_sent, data[:512]))
        super().data_received(data)

    async def push(self, status: Any) -> None:
        text = status.decode(errors="replace") if isinstance(status, bytes) else str(status)
        if text[3:4] != "-":
            self._replies_sent += 1  # the last line of a reply
        if self._greeted:
            await super().push(status)
            return
        # The very first reply of a session is the 220 greeting.
        self._greeted = True
        await self.fake_mx._stall("greeting")
        override = self.fake_mx._greeting
        if override is None:
            await super().push(status)
            return
        await super().push(override)
        if not _is_positive(override) and self.transport is not None:
            # 421/554 greeting: hang up; connection_lost() cancels the session task.
            self.transport.close()

    def abort(self) -> None:
        transport = self.transport
        if isinstance(transport, asyncio.WriteTransport):
            transport.abort()
        elif transport is not None:
            transport.close()

    @property
    def handler_task(self) -> asyncio.Task[None] | None:
        return self._handler_coroutine


class _Handler:
    """aiosmtpd handler hooks, delegating all decisions to the owning FakeMX."""

    def __init__(self, mx: FakeMX) -> None:
        self._mx = mx

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        # With this hook aiosmtpd leaves recording the EHLO name to it.
        session.host_name = hostname
        if self._mx.pipelining:
            responses.insert(len(responses) - 1, "250-PIPELINING")
        return responses

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        mx = self._mx
        await mx._stall("mail")
        reply = _next_reply(mx._mail_replies, DEFAULT_MAIL_REPLY)
        if _is_positive(reply):
            envelope.mail_from = address
            envelope.mail_options.extend(mail_options)
        return reply

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        mx = self._mx
        await mx._stall("rcpt")
        reply = _next_reply(mx._rcpt_replies.get(address.lower()), DEFAULT_RCPT_REPLY)
        if _is_positive(reply):
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
        return reply

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        mx = self._mx
        assert isinstance(server, _FakeSMTP)
        received = Received(
            mail_from=envelope.mail_from or "",
            rcpt_tos=list(envelope.rcpt_tos),
            data=bytes(envelope.original_content or b""),
            peer=_format_peer(session.peer),
            mail_options=list(envelope.mail_options),
            helo=session.host_name,
            session=server.session_number,
            tls=session.ssl is not None,
        )
        await mx._stall("data")
        if mx._drops_left > 0:
            mx._drops_left -= 1
            mx.dropped.append(received)
            mx._notify()
            if server.transport is not None:
                server.transport.close()
            # Never answer: connection_lost() cancels this session's task.
            await asyncio.get_running_loop().create_future()
        reply = _next_reply(mx._data_replies, DEFAULT_DATA_REPLY)
        if _is_positive(reply):
            mx.received.append(received)
        else:
            mx.rejected.append(received)
        mx._notify()
        return reply


class FakeMX:
    """A programmable SMTP server on a loopback address, in the running event loop."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, hostname: str = "mx.test") -> None:
        self.host = host
        self.port = port
        self.hostname = hostname
        self.received: list[Received] = []
        """Messages answered with a 2xx after DATA."""
        self.rejected: list[Received] = []
        """Messages whose DATA was answered with a 4xx/5xx (programmed via on_data)."""
        self.dropped: list[Received] = []
        """Messages fully transmitted but then dropped without a reply (drop_mid_data)."""
        self.connections = 0
        """Number of SMTP sessions opened so far."""
        self._server: asyncio.Server | None = None
        self._sessions: set[_FakeSMTP] = set()
        self._handler = _Handler(self)
        self._changed: asyncio.Event | None = None
        self._greeting: str | None = None
        self._mail_replies: list[str] | None = None
        self._data_replies: list[str] | None = None
        self._rcpt_replies: dict[str, list[str]] = {}
        self._stalls: dict[str, float] = {}
        self._drops_left = 0
        self.tls_context: ssl.SSLContext | None = None
        """Set before start() to offer STARTTLS with this server context."""
        self.smtputf8 = True
        """Set before start(): whether to advertise SMTPUTF8."""
        self.size_limit = DATA_SIZE_LIMIT
        """Set before start(): the SIZE advertised in EHLO (and enforced)."""
        self.pipelining = False
        """Whether EHLO advertises PIPELINING (RFC 2920); read at each EHLO, so it may be
        set on a running server. aiosmtpd reads pipelined commands one by one either way."""
        self.chunks: list[Chunk] = []
        """Every read of every session, in order (see ``Chunk``)."""

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("FakeMX already started")
        loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()

        def factory() -> _FakeSMTP:
            return _FakeSMTP(
                self,
                self._handler,
                hostname=self.hostname,
                ident="FakeMX ESMTP",
                enable_SMTPUTF8=self.smtputf8,
                decode_data=False,
                data_size_limit=self.size_limit,
                tls_context=self.tls_context,
                loop=loop,
            )

        self._server = await loop.create_server(factory, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening and abort every open session. Idempotent, never hangs."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        sessions = list(self._sessions)
        for proto in sessions:
            proto.abort()
        tasks = [t for p in sessions if (t := p.handler_task) is not None and not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)
        await asyncio.wait_for(server.wait_closed(), timeout=5.0)

    async def __aenter__(self) -> FakeMX:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def __repr__(self) -> str:
        return (
            f"FakeMX({self.host}:{self.port}, connections={self.connections}, "
            f"received={len(self.received)}, rejected={len(self.rejected)}, "
            f"dropped={len(self.dropped)})"
        )

    # ------------------------------------------------------------------ programming

    def on_greeting(self, reply: str) -> None:
        """Replace the 220 greeting. A non-2xx greeting is sent and the connection closed."""
        self._greeting = _check_replies([reply])[0]

    def on_mail(self, *replies: str) -> None:
        """Replies to successive MAIL FROM commands (any sender); the last one repeats."""
        self._mail_replies = _check_replies(replies)

    def on_rcpt(self, address: str, *replies: str) -> None:
        """Replies to successive RCPT TO for ``address`` (case-insensitive), across sessions.

        The last reply repeats. Unprogrammed addresses get ``"250 2.1.5 OK"``.
        """
        self._rcpt_replies[address.lower()] = _check_replies(replies)

    def on_data(self, *replies: str) -> None:
        """Final replies after successive DATA transactions; the last one repeats."""
        self._data_replies = _check_replies(replies)

    def stall(self, stage: Stage, seconds: float) -> None:
        """Sleep ``seconds`` before answering at ``stage`` in every session (0 clears).

        ``"data"`` delays the final reply after the message body (not the 354),
        ``"greeting"`` delays the 220 banner.
        """
        if stage not in _STAGES:
            raise ValueError(f"unknown stage {stage!r}; expected one of {_STAGES}")
        if seconds <= 0:
            self._stalls.pop(stage, None)
        else:
            self._stalls[stage] = seconds

    def drop_mid_data(self, times: int = 1) -> None:
        """For the next ``times`` DATA transactions: receive the whole body, then close the
        connection without sending the final reply. Such messages land in ``dropped``."""
        self._drops_left = times

    def clear(self) -> None:
        """Forget all programming (replies, stalls, drops, greeting); keeps what was received."""
        self._greeting = None
        self._mail_replies = None
        self._data_replies = None
        self._rcpt_replies.clear()
        self._stalls.clear()
        self._drops_left = 0

    # ------------------------------------------------------------------ inspection

    def messages_for(self, address: str) -> list[Received]:
        wanted = address.lower()
        return [r for r in self.received if any(a.lower() == wanted for a in r.rcpt_tos)]

    async def wait_for_messages(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Wait until at least ``count`` messages were received; return (a copy of) them all."""
        await self.wait_until(
            lambda: len(self.received) >= count,
            timeout=timeout,
            what=f"at least {count} received message(s)",
        )
        return list(self.received)

    async def wait_for_connections(self, count: int, timeout: float = 10.0) -> None:
        """Wait until at least ``count`` SMTP sessions have been opened."""
        await self.wait_until(
            lambda: self.connections >= count,
            timeout=timeout,
            what=f"at least {count} connection(s)",
        )

    async def wait_until(
        self, predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition"
    ) -> None:
        """Wait (event driven, with a deadline) until ``predicate()`` is true.

        The predicate is re-evaluated whenever this server's state changes (session opened
        or closed, message received/rejected/dropped). Raises AssertionError on timeout.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(
                    f"{self!r}: timed out after {timeout:g}s waiting for {what}; "
                    f"received: {self._summary()}"
                )
            changed = self._changed_event()
            changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout=remaining)

    # ------------------------------------------------------------------ internals

    def _summary(self) -> str:
        if not self.received:
            return "nothing"
        return "; ".join(
            f"{r.mail_from} -> {', '.join(r.rcpt_tos)} ({len(r.data)} bytes)" for r in self.received
        )

    def _changed_event(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()

    def _session_opened(self, proto: _FakeSMTP) -> int:
        self._sessions.add(proto)
        self.connections += 1
        self._notify()
        return self.connections

    def _session_closed(self, proto: _FakeSMTP) -> None:
        self._sessions.discard(proto)
        self._notify()

    async def _stall(self, stage: str) -> None:
        seconds = self._stalls.get(stage)
        if seconds:
            await asyncio.sleep(seconds)


async def start_mx_group(
    hosts: Sequence[str], *, port: int = 0, hostname: str = "mx.test", attempts: int = 20
) -> list[FakeMX]:
    """Start one FakeMX per host (e.g. 127.0.0.2, 127.0.0.3), all on the same port.

    Useful because a delivery engine connects to every MX on one configured port. With
    ``port=0`` a random port free on every host is found (retrying on collisions).
    """
    if not hosts:
        raise ValueError("at least one host is required")
    last_error: OSError | None = None
    for _ in range(attempts if port == 0 else 1):
        started: list[FakeMX] = []
        try:
            shared = port
            for host in hosts:
                mx = FakeMX(host, shared, hostname=hostname)
                await mx.start()
                started.append(mx)
                shared = mx.port
            return started
        except OSError as exc:
            last_error = exc
            for mx in started:
                await mx.stop()
    raise RuntimeError(f"could not bind FakeMX on a common port for {list(hosts)}: {last_error}")


class FakeMXFactory:
    """Creates FakeMX servers on demand and stops them all in ``aclose()``."""

    def __init__(self) -> None:
        self.servers: list[FakeMX] = []

    async def __call__(
        self, host: str = "127.0.0.1", port: int = 0, hostname: str = "mx.test"
    ) -> FakeMX:
        mx = FakeMX(host, port, hostname=hostname)
        await mx.start()
        self.servers.append(mx)
        return mx

    async def group(self, *hosts: str, port: int = 0, hostname: str = "mx.test") -> list[FakeMX]:
        """Several FakeMX on different loopback IPs sharing one port (see start_mx_group)."""
        group = await start_mx_group(hosts, port=port, hostname=hostname)
        self.servers.extend(group)
        return group

    async def aclose(self) -> None:
        servers, self.servers = self.servers, []
        for mx in servers:
            await mx.stop()
