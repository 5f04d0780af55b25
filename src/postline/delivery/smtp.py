"""One SMTP transaction to one destination: MAIL, RCPT per recipient, DATA.

The outcome is reported per recipient; nothing here touches the store.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import aiosmtplib

from postline.delivery import pipelining
from postline.delivery.lease import StillMine, always_mine
from postline.delivery.pool import Session, SessionPool, SmtpSettings, TlsRequired
from postline.delivery.replies import Reply
from postline.delivery.routing import Router, Target
from postline.delivery.tls import TlsDemand, TlsInfo, TlsPlan
from postline.model import AttemptScope


@dataclass
class TransactionResult:
    """What the destination said. ``error`` is a failure of the whole transaction."""

    mx_host: str | None = None
    error: Reply | None = None
    rcpt: dict[str, Reply] = field(default_factory=dict)
    data: Reply | None = None
    duration_ms: int = 0
    stale_session: bool = False  # failed on a pooled session before any reply
    refused_locally: bool = False  # we declined to send (SIZE, SMTPUTF8): not the server's health
    #: The TLS the deciding connection had, or the policy that refused it (for the timeline).
    tls: TlsInfo | None = None
    #: (MX host, TLS) of every connection tried under a policy, for the TLS reports.
    tls_sessions: list[tuple[str, TlsInfo]] = field(default_factory=list)

    def reply_for(self, address: str) -> tuple[Reply, AttemptScope]:
        """The reply deciding this recipient, and its scope (transaction or recipient).

        A definite permanent refusal of the RCPT stands whatever happened next
        (a 421, a dropped connection, a refused DATA): the server said no to that
        address, and retrying it would only ask again. Everyone else shares the
        transaction's fate.
        """
        rcpt = self.rcpt.get(address)
        if rcpt is not None and rcpt.is_permanent:
            return rcpt, AttemptScope.RECIPIENT
        if self.error is not None:
            return self.error, AttemptScope.TRANSACTION
        if rcpt is None:
            return Reply(None, "no reply for this recipient"), AttemptScope.TRANSACTION
        if not rcpt.is_success:
            return rcpt, AttemptScope.RECIPIENT
        assert self.data is not None
        return self.data, AttemptScope.TRANSACTION


class SmtpDelivery:
    def __init__(self, router: Router, settings: SmtpSettings) -> None:
        self.router = router
        self.settings = settings
        self.pool = SessionPool(settings)

    async def send(
        self,
        targets: list[Target],
        envelope_from: str,
        recipients: list[str],
        body: bytes,
        plan: TlsPlan = TlsPlan(),
        still_mine: StillMine = always_mine,
    ) -> TransactionResult:
        """Try each target in order until one gives an answer that is not a connection failure.

        ``still_mine`` is asked before the final dot of DATA; when it says no, the
        connection is closed without it and ``lease.LeaseLost`` raised.
        """
        started = time.monotonic()
        result = TransactionResult(error=Reply(None, "no MX host to try"))
        # Permanent RCPT refusals already received: kept, and not asked of the next MX.
        refused: dict[str, Reply] = {}
        sessions: list[tuple[str, TlsInfo]] = []
        for target in targets:
            addresses = target.addresses
            if addresses is None:  # the operator's own route: not filtered
                addresses = tuple(await self.router.addresses(target.host))
            if not addresses:
                result = TransactionResult(
                    mx_host=target.mx, error=Reply(None, f"{target.mx} has no address")
                )
                continue
            for address in addresses:
                pending = [r for r in recipients if r not in refused]
                envelope = _Envelope(
                    envelope_from, pending, body, plan.for_mx(target.mx), still_mine
                )
                result = await self._attempt(target, address, envelope)
                if result.tls is not None:
                    sessions.append((target.mx, result.tls))
                result.tls_sessions = sessions
                refused.update((r, reply) for r, reply in result.rcpt.items() if reply.is_permanent)
                if not _try_next(result) or refused.keys() >= set(recipients):
                    return _finished(result, refused, started)
        return _finished(result, refused, started)

    async def _attempt(
        self, target: Target, address: str, envelope: _Envelope
    ) -> TransactionResult:
        result = await self._transaction(target, address, envelope, fresh=False)
        if result.error is not None and result.error.code is None and result.stale_session:
            # The server had closed the pooled session while it sat idle: nothing was
            # sent on it, so try once on a new connection.
            result = await self._transaction(target, address, envelope, fresh=True)
        return result

    async def _transaction(
        self, target: Target, address: str, envelope: _Envelope, *, fresh: bool
    ) -> TransactionResult:
        result = TransactionResult(mx_host=target.mx, tls=TlsInfo(envelope.demand.source))
        session: Session | None = None
        clean = False
        try:
            session = await self.pool.session(
                address, target.port, mx_name=target.mx, demand=envelope.demand, fresh=fresh
            )
            result.tls = session.tls
            client = session.client
            refusal = _refusal(client, envelope)
            if refusal is not None:
                result.error = refusal
                result.refused_locally = clean = True
                return result
            if client.supports_extension("pipelining"):
                # RFC 2920: MAIL, the RCPTs and DATA in one write; same outcomes, fewer trips.
                ending = await pipelining.transact(
                    client,
                    envelope.sender,
                    _mail_options(client, envelope),
                    envelope.recipients,
                    envelope.body,
                    result.rcpt,
                    envelope.still_mine,
                )
                result.error, result.data, clean = ending.error, ending.data, ending.clean
                return result
            await client.mail(
                envelope.sender, options=_mail_options(client, envelope), encoding="utf-8"
            )
            for recipient in envelope.recipients:
                try:
                    response = await client.rcpt(recipient, encoding="utf-8")
                    result.rcpt[recipient] = Reply.of(response.code, response.message)
                except aiosmtplib.SMTPRecipientRefused as exc:
                    result.rcpt[recipient] = Reply.of(exc.code, exc.message)
                    if exc.code == pipelining.CLOSING:
                        # RFC 5321 3.8: the server is closing; what it said so far stands.
                        result.error = result.rcpt[recipient]
                        return result
            if any(reply.is_success for reply in result.rcpt.values()):
                result.data = await pipelining.data(client, envelope.body, envelope.still_mine)
                clean = True
            else:
                # Every recipient was refused and their replies are the outcome; a
                # failing RSET only means this session must not be reused.
                clean = await _reset(client)
        except aiosmtplib.SMTPResponseException as exc:
            # Greeting, MAIL or DATA refused: the whole transaction failed.
            result.error = Reply.of(exc.code, exc.message)
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            result.error = Reply.of(None, f"{type(exc).__name__}: {exc}")
            if isinstance(exc, TlsRequired):
                result.tls = TlsInfo(envelope.demand.source, failure=exc.result_type)
            result.stale_session = session is not None and session.reused and not result.rcpt
        finally:
            if session is not None:
                await self.pool.give_back(session, clean=clean)
        return result


def _finished(
    result: TransactionResult, refused: dict[str, Reply], started: float
) -> TransactionResult:
    result.rcpt.update(refused)
    result.duration_ms = int((time.monotonic() - started) * 1000)
    return result


async def _reset(client: aiosmtplib.SMTP) -> bool:
    try:
        await client.rset()
    except (TimeoutError, aiosmtplib.SMTPException, OSError):
        return False
    return True


@dataclass(frozen=True)
class _Envelope:
    sender: str
    recipients: list[str]
    body: bytes
    demand: TlsDemand
    still_mine: StillMine

    @property
    def needs_smtputf8(self) -> bool:
        return not (self.sender.isascii() and all(r.isascii() for r in self.recipients))


def _advertised_size(client: aiosmtplib.SMTP) -> int | None:
    """The server's SIZE limit, or None when it gave none we can read.

    The value is untrusted text: only a plain ASCII number of sane length counts
    (``str.isdigit`` alone accepts "²", and a 4,000-digit number is not a limit).
    """
    value = client.esmtp_extensions.get("size", "").strip()
    if not (value.isascii() and value.isdigit() and len(value) <= 20):
        return None
    return int(value) or None


def _refusal(client: aiosmtplib.SMTP, envelope: _Envelope) -> Reply | None:
    """Permanent failures we can tell from the EHLO answer without sending anything."""
    limit = _advertised_size(client)
    if limit is not None and len(envelope.body) > limit:
        return Reply(
            552, f"5.3.4 message of {len(envelope.body)} bytes exceeds the server's SIZE {limit}"
        )
    if envelope.needs_smtputf8 and not client.supports_extension("smtputf8"):
        return Reply(553, "5.6.7 the server does not support SMTPUTF8 for these addresses")
    return None


def _mail_options(client: aiosmtplib.SMTP, envelope: _Envelope) -> list[str]:
    options = []
    if _advertised_size(client) is not None:
        options.append(f"SIZE={len(envelope.body)}")
    if envelope.needs_smtputf8:
        options.append("SMTPUTF8")
    if not envelope.body.isascii() and client.supports_extension("8bitmime"):
        options.append("BODY=8BITMIME")
    return options


def _try_next(result: TransactionResult) -> bool:
    """Move to the next MX on a connection failure or a 4xx before any recipient was taken."""
    if result.error is None:
        return False
    if result.error.code is None:
        return True
    return not result.rcpt and not result.error.is_permanent
