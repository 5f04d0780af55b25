"""The inbound MX (``POSTLINE_INBOUND_ADDR``): reports to return paths, and routed mail.

It is reachable from the whole internet on port 25 in production, so it takes mail for
exactly three kinds of address and refuses every other at RCPT:

- a return path whose token checks (``postline.inbound.returnpath``); one with the shape
  but a wrong token is a forgery, refused the same way as a stranger (550 5.1.1), so
  that the reply tells a prober nothing;
- the feedback-loop address (``POSTLINE_INBOUND_FBL_ADDRESS``), for complaint loops that
  report to a fixed address;
- an address an inbound route matches (``postline.inbound.routed``): stored with its
  ``email.received`` event before the 250.

It never relays and never delivers anything anywhere: what it accepts is parsed and
applied (``postline.inbound.apply``), stored as unmatched, or stored for its route.
"""

from __future__ import annotations

import asyncio
import logging

from aiosmtpd.smtp import SMTP, Envelope, Session

from postline.delivery.replies import sanitize
from postline.inbound.apply import InboundReports, Received, TooEarly
from postline.inbound.returnpath import ReturnPaths
from postline.inbound.routed import RoutedMail
from postline.metrics import Metrics
from postline.smtpd import LoopSmtpServer

log = logging.getLogger("postline.inbound")

#: Reports are small; a bounce quoting a whole large message is cut by its sender anyway.
MAX_MESSAGE_BYTES = 10 * 1024 * 1024
#: Recipients in one transaction: reports come one per email, a few at most batched.
MAX_RECIPIENTS = 50
#: Seconds a client may stay silent before the connection is closed.
IDLE_TIMEOUT = 60.0
NO_SUCH_USER = "550 5.1.1 No such user here"


class InboundHandler:
    """aiosmtpd hooks: RCPT decides who may be written to, DATA applies the report."""

    def __init__(
        self,
        reports: InboundReports,
        return_paths: ReturnPaths,
        fbl_address: str,
        metrics: Metrics,
        routed: RoutedMail | None = None,
    ) -> None:
        self.reports = reports
        self.return_paths = return_paths
        self.fbl_address = fbl_address.lower()
        self.metrics = metrics
        self.routed = routed

    def _is_report(self, address: str) -> bool:
        return address.lower() == self.fbl_address or self._email_id(address) is not None

    def _email_id(self, address: str) -> str | None:
        checked = self.return_paths.check(address)
        return checked.email_id if checked is not None else None

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return "452 4.5.3 Too many recipients"
        if self._is_report(address):
            envelope.rcpt_tos.append(address)
            return "250 2.1.5 OK"
        try:
            routed = self.routed is not None and await self.routed.route_for(address) is not None
        except Exception as exc:  # the store is away: the sender tries again later
            log.warning("inbound route lookup failed: %s", type(exc).__name__)
            return "451 4.3.0 Temporary failure, please try again later"
        if routed:
            envelope.rcpt_tos.append(address)
            return "250 2.1.5 OK"
        forged = self.return_paths.looks_like(address)
        reason = "forged_token" if forged else "not_a_return_path"
        self.metrics.inbound_refused.labels(reason=reason).inc()
        log.info("inbound refused a recipient: %s", reason)
        return NO_SUCH_USER

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):  # only with decode_data, which this server never sets
            raw = raw.encode("utf-8", errors="surrogateescape")
        mail_from = str(envelope.mail_from or "")
        words: list[str] = []
        try:
            for rcpt in envelope.rcpt_tos:
                if self._is_report(rcpt):
                    received = Received(mail_from, rcpt, self._email_id(rcpt), raw)
                    words.append(await self.reports.take(received))
                else:
                    words.append(await self._take_routed(mail_from, rcpt, raw))
        except TooEarly as exc:
            log.info("inbound report before its delivery was recorded, asked to retry: %s", exc)
            return "451 4.3.0 The delivery reported on is not recorded yet, try again later"
        except Exception as exc:  # the store is away: the sender keeps it and retries
            log.warning("inbound report not stored, asked to retry: %s", type(exc).__name__)
            return "451 4.3.0 Temporary failure, please try again later"
        return sanitize("250 2.0.0 OK: " + "; ".join(words))[:500]

    async def _take_routed(self, mail_from: str, rcpt: str, raw: bytes) -> str:
        route = await self.routed.route_for(rcpt) if self.routed is not None else None
        if route is None or self.routed is None:  # deleted between RCPT and DATA
            raise LookupError("the route of an accepted recipient is gone")
        message_id = await self.routed.take(route, mail_from, rcpt, raw)
        self.metrics.inbound_reports.labels(kind="routed", result="stored").inc()
        return f"queued as {message_id}"


class InboundListener(LoopSmtpServer):
    """Runs in the caller's event loop on ``host:port`` (port 0: an ephemeral one)."""

    label = "inbound MX (return paths, the feedback address and inbound routes)"

    def __init__(self, handler: InboundHandler, host: str, port: int, hostname: str) -> None:
        super().__init__(host, port)
        self.handler = handler
        self.hostname = hostname

    def protocol(self, loop: asyncio.AbstractEventLoop) -> SMTP:
        return SMTP(
            self.handler,
            hostname=self.hostname,
            ident="Postline inbound",
            data_size_limit=MAX_MESSAGE_BYTES,
            enable_SMTPUTF8=True,
            timeout=IDLE_TIMEOUT,
            loop=loop,
        )
