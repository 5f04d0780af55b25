"""One submission session: aiosmtpd's SMTP protocol with the port's own rules.

aiosmtpd speaks the protocol (pipelining included: it reads one command after
another from the buffer); this subclass adds what a submission port owes its
clients and itself:

- AUTH only over TLS (STARTTLS, or the implicit-TLS listener), or in clear
  text from loopback while the setting allows it: ``530 5.7.0`` otherwise, and
  AUTH is not even advertised before then (RFC 4954 4);
- the key is checked asynchronously (aiosmtpd's authenticator is called
  synchronously, which would block the loop on the database);
- an enhanced status code on every reply (``replies.enhance``);
- limits per connection: after ``max_errors`` 5xx replies it says ``421`` and
  closes, as Postfix's ``smtpd_hard_error_limit`` does; silence (nothing
  received) longer than the idle timeout, or a session longer than its maximum,
  ends with ``421 4.4.2`` instead of aiosmtpd's silent close, so the client
  knows why.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from dataclasses import dataclass
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from postline.keys import Principal
from postline.store.domains import Domain
from postline.submission.replies import enhance

log = logging.getLogger("postline.submission")

TLS_FIRST = "530 5.7.0 Must issue a STARTTLS command first"
BAD_KEY = "535 5.7.8 Authentication credentials invalid (the password is an API key)"
TOO_MANY_ERRORS = "421 4.7.0 Too many errors on this connection, closing it"
IDLE = "421 4.4.2 Timeout: nothing received for too long, closing the connection"
TOO_LONG = "421 4.4.2 Session time limit reached, closing the connection"


@dataclass(frozen=True)
class SessionLimits:
    idle_timeout: float
    max_session_seconds: float
    max_errors: int
    loopback_plaintext_auth: bool


class _Pending(AuthResult):
    """What aiosmtpd's synchronous ``_authenticate`` hands back: the credentials, to
    be checked by the asynchronous auth methods below."""


class _Session(Session):
    """aiosmtpd's session without the deprecation warning its own AUTH code triggers on
    every login (it still sets the legacy ``login_data``): a log line per client, for
    nothing."""

    @property
    def login_data(self) -> Any:
        return self._login_data

    @login_data.setter
    def login_data(self, value: Any) -> None:
        self._login_data = value


def is_loopback(peer: Any) -> bool:
    if not isinstance(peer, tuple) or not peer:
        return False
    try:
        address = ipaddress.ip_address(str(peer[0]).split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


class SubmissionEnvelope(Envelope):
    """One mail transaction's envelope, and the sending domains read for it.

    MAIL checks the envelope sender's domain, DATA the From header's (most often the
    same), and the acceptor needs the From header's row again: read once per message,
    not three times. A new transaction (after DATA, or RSET) starts a new envelope.
    Only domains found are kept (``SubmissionHandler._domain_refusal``).
    """

    def __init__(self) -> None:
        super().__init__()
        self.domains: dict[str, Domain] = {}


class SubmissionSMTP(SMTP):
    """A session; ``verify(password)`` is the API's key check (``keys.authenticate``)."""

    def __init__(
        self,
        handler: Any,
        *,
        limits: SessionLimits,
        verify: Any,
        implicit_tls: bool,
        sessions: set[SubmissionSMTP] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, timeout=limits.idle_timeout, auth_require_tls=False, **kwargs)
        self.limits = limits
        self._verify = verify
        self._implicit_tls = implicit_tls
        self._errors = 0
        self._raw_replies = False
        self._session_timer: asyncio.TimerHandle | None = None
        #: The server's set of live sessions, which it closes at shutdown.
        self._sessions = sessions if sessions is not None else set()
        #: Between DATA and its reply: a shutdown waits for this (up to its grace).
        self.busy = False

    # --- connection lifetime -------------------------------------------------------

    def _create_session(self) -> Session:
        return _Session(self.loop)

    def _create_envelope(self) -> Envelope:
        return SubmissionEnvelope()

    def connection_made(self, transport: Any) -> None:
        first = self._session_timer is None and self._original_transport is None
        self._sessions.add(self)
        super().connection_made(transport)
        if first:  # not the second call a STARTTLS makes
            self._session_timer = self.loop.call_later(
                self.limits.max_session_seconds, self.close_with, TOO_LONG
            )

    def connection_lost(self, error: Exception | None) -> None:
        self._sessions.discard(self)
        if self._session_timer is not None:
            self._session_timer.cancel()
        super().connection_lost(error)

    def data_received(self, data: bytes) -> None:
        # Idle means silent: a large message still arriving keeps its session, which
        # aiosmtpd (its timer restarts only on a command) would cut mid-DATA.
        super().data_received(data)
        if self.transport is not None:
            self._reset_timeout()

    def _timeout_cb(self) -> None:
        self.close_with(IDLE)

    def close_with(self, reply: str) -> None:
        """Say why, then close (the write is flushed before the close completes)."""
        if self.transport is None or self.transport.is_closing():
            return
        log.info("closing a submission session: %s", reply[4:])
        self._writer.write(reply.encode() + b"\r\n")
        self.transport.close()

    # --- replies -------------------------------------------------------------------

    async def push(self, status: Any) -> None:
        if isinstance(status, str) and not self._raw_replies:
            status = enhance(status)
            if status.startswith("5") and status[3:4] == " ":
                self._errors += 1
                if self._errors >= self.limits.max_errors:
                    await super().push(status)
                    self.close_with(TOO_MANY_ERRORS)
                    return
        await super().push(status)

    async def smtp_EHLO(self, hostname: str) -> None:
        self._raw_replies = True  # EHLO's lines carry no enhanced codes (RFC 2034 3)
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._raw_replies = False

    async def smtp_DATA(self, arg: str) -> None:
        self.busy = True
        try:
            await super().smtp_DATA(arg)
        finally:
            self.busy = False

    # --- authentication ------------------------------------------------------------

    @property
    def secure(self) -> bool:
        return self._implicit_tls or self._tls_protocol is not None

    def may_authenticate(self) -> bool:  # not auth_*: aiosmtpd takes those for mechanisms
        """Over TLS, or from loopback while the setting allows clear text."""
        if self.secure:
            return True
        peer = self.session.peer if self.session is not None else None
        return self.limits.loopback_plaintext_auth and is_loopback(peer)

    async def smtp_AUTH(self, arg: str) -> None:
        session = self.session
        if session is not None and session.extended_smtp and not self.may_authenticate():
            await self.push(TLS_FIRST)
            return
        await super().smtp_AUTH(arg)

    def _authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        return _Pending(success=False, handled=False, auth_data=auth_data)

    async def _checked(self, result: AuthResult) -> AuthResult:
        if not isinstance(result, _Pending):
            return result  # refused already (bad base64, aborted): aiosmtpd answered
        credentials = result.auth_data
        assert isinstance(credentials, LoginPassword)
        try:
            secret = credentials.password.decode("utf-8")
        except UnicodeDecodeError:
            return AuthResult(success=False, handled=False, message=BAD_KEY)
        principal: Principal | None = await self._verify(secret.strip())
        if principal is None:
            return AuthResult(success=False, handled=False, message=BAD_KEY)
        return AuthResult(success=True, auth_data=principal)

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._checked(await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._checked(await super().auth_LOGIN(_, args))
