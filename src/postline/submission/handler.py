"""The submission port's decisions: who may send what, and handing mail to the acceptor.

Mail taken here becomes a tracked email exactly as ``POST /v1/emails`` makes
one: the same ``Acceptor.accept`` (body fsynced in the spool and rows committed
before the ``250``), the same key scopes, the same per-key rate limit, the same
suppression check per recipient. Each refusal is an SMTP reply with an enhanced
code a mail client can show its user; no exception text reaches the client.
"""

from __future__ import annotations

import logging
import time

from aiosmtpd.smtp import SMTP, Envelope, Session

from postline.accept import AcceptError, Acceptor
from postline.keys import Principal
from postline.metrics import Metrics
from postline.model import EmailSource
from postline.ratelimit import RateLimiter, smtp_refusal
from postline.spool import SpoolFull
from postline.store.domains import Domain
from postline.store.types import utcnow
from postline.submission.headers import HeaderError
from postline.submission.protocol import SubmissionEnvelope
from postline.submission.raw import raw_submission
from postline.validation import normalize_address

log = logging.getLogger("postline.submission")

AUTH_FIRST = "530 5.7.0 Authentication required"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients for one message"
TRY_LATER = "451 4.3.0 Temporary failure, please try again later"
NO_SPACE = "452 4.3.1 Insufficient system storage, please try again later"


class SubmissionHandler:
    """aiosmtpd handler hooks; one instance serves every session of a listener."""

    def __init__(
        self,
        acceptor: Acceptor,
        limiter: RateLimiter,
        metrics: Metrics,
        *,
        max_recipients: int,
    ) -> None:
        self.acceptor = acceptor
        self.limiter = limiter
        self.metrics = metrics
        self.max_recipients = max_recipients

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        allowed = getattr(server, "may_authenticate", lambda: False)()
        lines = [r for r in responses[:-1] if allowed or not r.startswith("250-AUTH")]
        return [*lines, "250-PIPELINING", "250-ENHANCEDSTATUSCODES", "250 HELP"]

    async def _domain_refusal(
        self, principal: Principal, address: str, which: str, envelope: Envelope
    ) -> str | None:
        """Why ``principal`` may not send from ``address``'s domain, or None when it may."""
        name = address.rpartition("@")[2].lower()
        known = _known_domains(envelope)
        row = known.get(name)
        if row is None:
            # The acceptor's lookup: shared with the sessions' and the API's meanwhile,
            # and no read transaction (its BEGIN and ROLLBACK were 9% of the API
            # process's samples with ten sessions submitting). Only a domain found is
            # kept: a client refused here may add the domain and try MAIL again.
            row = await self.acceptor.domain_of(address)
            if row is not None:
                known[name] = row
        if principal.domain_id is not None and (row is None or row.id != principal.domain_id):
            return (
                f"550 5.7.1 The {which} domain {name} is not one this API key may send from"
                f" (it may send from {principal.domain_name})"
            )
        if row is None:
            return f"550 5.7.1 The {which} domain {name} is not a sending domain of this server"
        return None

    async def _take_tokens(self, principal: Principal, count: int) -> str | None:
        if not self.limiter.enabled:
            return None
        decision = await self.limiter.check(principal.key_id, EmailSource.SMTP, count=count)
        if decision is None or decision.allowed:
            return None
        return smtp_refusal(decision)

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        principal = session.auth_data if session.authenticated else None
        if not isinstance(principal, Principal):
            return AUTH_FIRST
        try:
            sender = normalize_address(address)
        except ValueError:
            return "553 5.1.7 The envelope sender is not a valid address"
        refusal = await self._domain_refusal(principal, sender, "envelope sender's", envelope)
        if refusal is None:
            # The message's own token, taken before its body is sent; the recipients'
            # after DATA, as the API takes one per recipient.
            refusal = await self._take_tokens(principal, 1)
        if refusal is not None:
            return refusal
        envelope.mail_from = sender
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Sender OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        # A message takes a rate-limit token per recipient: more than a full bucket
        # holds could never be sent, so those recipients are refused here, not after DATA.
        most = self.max_recipients
        if self.limiter.enabled:
            most = min(most, self.limiter.burst)
        if len(envelope.rcpt_tos) >= most:
            return TOO_MANY_RECIPIENTS
        try:
            recipient = normalize_address(address)
        except ValueError:
            return "553 5.1.3 The recipient is not a valid address"
        envelope.rcpt_tos.append(recipient)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Recipient OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        principal = session.auth_data
        assert isinstance(principal, Principal)  # MAIL needed it
        started = time.monotonic()
        raw = envelope.original_content or b""
        try:
            submission = raw_submission(raw, envelope.rcpt_tos, EmailSource.SMTP, utcnow())
        except HeaderError as exc:
            return f"550 5.6.0 {exc}"
        from_address = submission.content.from_address
        refusal = await self._domain_refusal(principal, from_address, "From header's", envelope)
        if refusal is None and len(envelope.rcpt_tos) > 1:
            refusal = await self._take_tokens(principal, len(envelope.rcpt_tos) - 1)
        if refusal is not None:
            return refusal
        try:
            accepted = (
                await self.acceptor.accept(
                    [submission], principal, domains=_known_domains(envelope)
                )
            )[0]
        except AcceptError as exc:
            return _refusal(exc)
        except SpoolFull:
            return NO_SPACE
        except Exception as exc:  # the database: the client keeps the message and retries
            log.warning("a submission could not be accepted: %s", type(exc).__name__)
            return TRY_LATER
        self.metrics.accept_seconds.observe(time.monotonic() - started)
        return f"250 2.0.0 OK: queued as {accepted.id}"

    async def handle_exception(self, error: Exception) -> str:
        """The database or the spool failed: the client keeps the message and retries."""
        log.warning("a submission failed: %s", type(error).__name__)
        return TRY_LATER


def _known_domains(envelope: Envelope) -> dict[str, Domain]:
    """The sending domains read for this message so far (``SubmissionEnvelope``)."""
    return envelope.domains if isinstance(envelope, SubmissionEnvelope) else {}


def _refusal(error: AcceptError) -> str:
    """An acceptor's refusal (worded for the API) as an SMTP reply."""
    if error.status == 413:
        return f"552 5.3.4 Message too big: {error.message}"
    if error.status in {403, 422} and error.field.endswith("from"):
        return f"550 5.7.1 {error.message}"
    return f"554 5.6.0 {error.message}"
