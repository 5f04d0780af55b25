"""Open SMTP sessions kept per MX address and reused across jobs.

A session that ended its last transaction cleanly goes back to the pool and
carries the next message to the same host (a new MAIL FROM starts a new
transaction; RSET cleared any aborted one). Sessions retire after
``max_messages`` or ``idle_seconds`` — the way Postfix's connection cache does.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from functools import cached_property

import aiosmtplib

from postline.delivery import dane
from postline.delivery.tls import OPPORTUNISTIC, PolicySource, TlsDemand, TlsInfo, TlsLevel


class TlsRequired(aiosmtplib.SMTPException):
    """The policy demands TLS this server did not give: defer, never send in plaintext.

    ``result_type`` names the failure as TLS reports do (RFC 8460 4.3).
    """

    def __init__(self, message: str, result_type: str) -> None:
        super().__init__(message)
        self.result_type = result_type


#: OpenSSL's X509_V_ERR_* codes that have an RFC 8460 result type of their own.
_HOSTNAME_MISMATCH = 62
_CERT_HAS_EXPIRED = 10


def _result_type(exc: BaseException) -> str:
    """The RFC 8460 result type of a failed verified handshake."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        if exc.verify_code == _HOSTNAME_MISMATCH:
            return "certificate-host-mismatch"
        if exc.verify_code == _CERT_HAS_EXPIRED:
            return "certificate-expired"
        return "certificate-not-trusted"
    return "validation-failure"


@dataclass(frozen=True)
class SmtpSettings:
    helo_name: str
    connect_timeout: float
    command_timeout: float
    max_messages_per_session: int = 100
    idle_seconds: float = 30.0
    ca_file: str | None = None  # extra trust anchors for verified TLS (besides the system's)

    # Each built once per settings and shared by every session: loading the system's
    # trust anchors takes 22 ms of CPU, which aiosmtplib spent again on each STARTTLS it
    # was not handed a context for, and the app twice on every start.
    @cached_property
    def verify_context(self) -> ssl.SSLContext:
        """The system's trust anchors plus ``ca_file``'s, checking the host name."""
        context = ssl.create_default_context()
        if self.ca_file:
            context.load_verify_locations(cafile=self.ca_file)
        return context

    @cached_property
    def opportunistic_context(self) -> ssl.SSLContext:
        """TLS that takes any certificate: what aiosmtplib builds for ``validate_certs=False``."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context


@dataclass
class Session:
    client: aiosmtplib.SMTP
    key: tuple[str, int, str, str]
    tls: TlsInfo
    messages: int = 0
    idle_since: float = field(default_factory=time.monotonic)
    reused: bool = False


class SessionPool:
    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings
        self._idle: defaultdict[tuple[str, int, str, str], list[Session]] = defaultdict(list)
        self.opened = 0

    async def session(
        self,
        address: str,
        port: int,
        *,
        mx_name: str,
        demand: TlsDemand = OPPORTUNISTIC,
        fresh: bool = False,
    ) -> Session:
        """An open session to address:port: an idle one if there is one, else a new one."""
        key = (address, port, mx_name, demand.key)
        idle = self._idle[key]
        while idle and not fresh:
            candidate = idle.pop()
            too_old = time.monotonic() - candidate.idle_since > self.settings.idle_seconds
            usable = candidate.client.is_connected and not _has_unread_replies(candidate.client)
            if too_old or not usable:
                await close_session(candidate.client)
                continue
            candidate.reused = True
            return candidate
        if demand.source is PolicySource.MTA_STS_TESTING:
            client, tls = await self._open_testing(address, port, mx_name, demand)
        else:
            client, tls = await self._open(address, port, mx_name, demand)
        self.opened += 1
        return Session(client, key, tls)

    async def _open_testing(
        self, address: str, port: int, mx_name: str, demand: TlsDemand
    ) -> tuple[aiosmtplib.SMTP, TlsInfo]:
        """MTA-STS ``testing``: try as ``enforce`` would; when that fails, deliver as
        before on a new connection and say what failed (for the TLS report). An MX the
        policy does not name fails at once, without a first try."""
        if demand.unlisted:
            client, tls = await self._open(address, port, mx_name, demand)
            return client, replace(tls, failure="validation-failure")
        try:
            return await self._open(address, port, mx_name, replace(demand, level=TlsLevel.VERIFY))
        except TlsRequired as exc:
            client, tls = await self._open(address, port, mx_name, demand)
            return client, replace(tls, failure=exc.result_type)

    async def _open(
        self, address: str, port: int, mx_name: str, demand: TlsDemand
    ) -> tuple[aiosmtplib.SMTP, TlsInfo]:
        """A connected client, upgraded as ``demand`` says; a demand other than
        opportunistic that the server cannot meet raises :class:`TlsRequired`."""
        client = aiosmtplib.SMTP(
            hostname=address,
            port=port,
            local_hostname=self.settings.helo_name,
            timeout=self.settings.command_timeout,
            start_tls=False,  # STARTTLS is decided below, by policy
            validate_certs=False,
        )
        await client.connect(timeout=self.settings.connect_timeout)
        level = demand.level
        try:
            await client.ehlo()
            if not client.supports_extension("starttls"):
                if level is not TlsLevel.OPPORTUNISTIC:
                    raise TlsRequired(
                        f"TLS policy {demand.source} ({level}): {mx_name} does not offer STARTTLS",
                        "starttls-not-supported",
                    )
                return client, TlsInfo(demand.source)
            verified = False
            try:
                if level is TlsLevel.VERIFY:
                    context = self.settings.verify_context
                    await client.starttls(server_hostname=mx_name, tls_context=context)
                    verified = True
                else:
                    await client.starttls(tls_context=self.settings.opportunistic_context)
            except (aiosmtplib.SMTPException, OSError) as exc:
                if level is TlsLevel.OPPORTUNISTIC:
                    raise
                # Never a plaintext retry: the policy's name and why, for the timeline.
                raise TlsRequired(
                    f"TLS policy {demand.source} ({level}): STARTTLS with {mx_name} failed: {exc}",
                    _result_type(exc),
                ) from exc
            ssl_object = client.get_transport_info("ssl_object")
            if level is TlsLevel.DANE:
                problem = dane.check(ssl_object, demand.tlsa, mx_name)
                if problem is not None:
                    raise TlsRequired(f"TLS policy dane: {mx_name}: {problem}", "tlsa-invalid")
                verified = bool(demand.tlsa)
            version = ssl_object.version() if ssl_object is not None else None
            # RFC 3207 4.2: what the plaintext EHLO said is forgotten (aiosmtplib clears it).
            # Ask again now: SIZE, SMTPUTF8 and PIPELINING are decided before MAIL.
            await client.ehlo()
        except BaseException:
            client.close()
            raise
        return client, TlsInfo(demand.source, version, verified)

    async def give_back(self, session: Session, *, clean: bool) -> None:
        """Keep a session whose transaction ended cleanly; close anything else."""
        session.messages += 1
        keep = (
            clean
            and session.client.is_connected
            and not _has_unread_replies(session.client)
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


def _has_unread_replies(client: aiosmtplib.SMTP) -> bool:
    """Whether the server sent more than it was asked for.

    Bytes after a complete reply would answer our next command on this session,
    so a session holding any is out of step and must not be pooled. aiosmtplib
    has no public accessor for its read buffer.
    """
    protocol = client.protocol
    buffer = getattr(protocol, "_buffer", None) if protocol is not None else None
    return bool(buffer)
