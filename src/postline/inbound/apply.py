"""Apply a report: find its email and recipients, move them as the engine would.

Every move goes through :func:`postline.outcomes.apply_outcome`, in one transaction with
its event, its suppression and the email's derived status, exactly as the recorder
writes an SMTP outcome. A report that cannot be applied (unreadable, about no email
Postline knows, a purged one, an unknown recipient, a recipient no longer delivered) is
stored with the reason in that same transaction and counted: none is dropped silently.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from postline.delivery.replies import sanitize
from postline.ids import new_id
from postline.inbound.mime import header, parse_message
from postline.inbound.parse import parse_report
from postline.inbound.report import Entry, Kind, Report, Unparsed
from postline.inbound.returnpath import ReturnPaths
from postline.inbound.verdict import bounce_outcome, complaint_outcome
from postline.metrics import Metrics
from postline.model import AttemptScope, RecipientStatus
from postline.outcomes import Outcome, apply_outcome, refresh_email_status
from postline.store import emails as email_store
from postline.store import inbound as inbound_store
from postline.store.db import Database
from postline.store.emails import Email, EmailFilter, Recipient
from postline.store.types import Clock, utcnow
from postline.wakeups import Wakeups

log = logging.getLogger("postline.inbound")

_NOT_RECORDED = "the recipient is queued: its delivery is not recorded yet"
#: What of an unmatched message is kept for the operator to look at.
EXCERPT_BYTES = 8 * 1024
COMPLAINT_TYPES = frozenset({"abuse"})


@dataclass(frozen=True)
class Received:
    """One message as the listener took it. ``email_id``: the one its (checked) return
    path names; None for mail to the feedback-loop address."""

    mail_from: str
    rcpt_to: str
    email_id: str | None
    raw: bytes


class TooEarly(Exception):
    """The report names a delivery not recorded yet (its recipient still ``queued``): the
    receiver's 250 and the report crossed the recording. Nothing is stored; the reporter
    is asked to try again (451), as any MTA does, and by then the outcome is there."""


@dataclass
class _Result:
    applied: int = 0
    reasons: list[str] = field(default_factory=list)
    email_id: str | None = None
    #: A recipient named by the report is still queued (see TooEarly).
    too_early: bool = False


class InboundReports:
    def __init__(
        self,
        db: Database,
        metrics: Metrics,
        wakeups: Wakeups,
        return_paths: ReturnPaths,
        *,
        clock: Clock = utcnow,
    ) -> None:
        self.db = db
        self.metrics = metrics
        self.wakeups = wakeups
        self.return_paths = return_paths
        self.clock = clock

    async def take(self, received: Received) -> str:
        """Apply or store ``received``, durably; the words for the 250 reply."""
        try:
            report: Report | None = await asyncio.to_thread(parse_report, received.raw)
            unparsed = None
        except Unparsed as exc:
            report, unparsed = None, str(exc)
        now = self.clock()
        async with self.db.write() as conn:
            if report is None:
                result = _Result(reasons=[unparsed or "unreadable"], email_id=received.email_id)
            else:
                result = await self._apply(conn, received, report, now)
            if not result.applied and result.too_early:
                raise TooEarly(result.reasons[0])
            if not result.applied:
                await inbound_store.add_unmatched(
                    conn, _unmatched_row(received, report, result, now)
                )
        kind = str(report.kind) if report is not None else "unparsed"
        if result.applied:
            self.wakeups.events_written()
            self.metrics.inbound_reports.labels(kind=kind, result="applied").inc()
            log.info(
                "inbound %s applied email_id=%s recipients=%d",
                kind,
                result.email_id,
                result.applied,
            )
            return f"{kind} applied to {result.applied} recipient(s)"
        self.metrics.inbound_reports.labels(kind=kind, result="unmatched").inc()
        log.info("inbound %s not applied email_id=%s: %s", kind, result.email_id, result.reasons[0])
        return f"{kind} stored as unmatched"

    async def _email_id(
        self, conn: AsyncConnection, received: Received, report: Report
    ) -> str | None:
        if received.email_id is not None:
            return received.email_id
        if report.original_return_path:
            checked = self.return_paths.check(report.original_return_path)
            if checked is not None:
                return checked.email_id
        if report.original_message_id:
            found = await email_store.list_emails(
                conn, EmailFilter(message_id=report.original_message_id), None, 1
            )
            if found:
                return found[0].email.id
        return None

    async def _apply(
        self, conn: AsyncConnection, received: Received, report: Report, now: datetime
    ) -> _Result:
        result = _Result()
        if report.kind is Kind.COMPLAINT and report.feedback_type not in COMPLAINT_TYPES:
            kind = sanitize(report.feedback_type or "")[:40]  # the report's own words
            result.reasons.append(f"feedback-type {kind} is not a complaint")
            return result
        result.email_id = await self._email_id(conn, received, report)
        if result.email_id is None:
            result.reasons.append("names no email Postline sent")
            return result
        emails = await email_store.lock_emails(conn, [result.email_id])
        if not emails:
            result.reasons.append("email not found: purged, or never sent")
            return result
        (email,) = emails
        recipients = await email_store.get_recipients(conn, email.id)
        entries = [e for e in report.entries if e.action in ("failed", "complaint")]
        if not entries:
            actions = ",".join(sorted({e.action for e in report.entries})) or "none"
            result.reasons.append(f"no failed recipient in the report (actions: {actions})")
            return result
        for entry in entries:
            reason = await self._apply_entry(conn, email, recipients, entry, report, now)
            if reason is None:
                result.applied += 1
            else:
                result.reasons.append(reason)
                result.too_early = result.too_early or reason == _NOT_RECORDED
        if result.applied:
            await refresh_email_status(conn, email, now)
        return result

    async def _apply_entry(
        self,
        conn: AsyncConnection,
        email: Email,
        recipients: list[Recipient],
        entry: Entry,
        report: Report,
        now: datetime,
    ) -> str | None:
        """Move the entry's recipient; None when it moved, else why not."""
        recipient = _match(entry, recipients)
        if recipient is None:
            if not entry.addresses:
                return f"the report names no recipient and the email has {len(recipients)}"
            return "the report's recipient is not one of the email's"
        outcome: Outcome = (
            complaint_outcome(report) if report.kind is Kind.COMPLAINT else bounce_outcome(entry)
        )
        moved = await apply_outcome(
            conn, email=email, recipient=recipient, outcome=outcome, now=now
        )
        if not moved:
            if recipient.status == RecipientStatus.QUEUED:
                return _NOT_RECORDED
            return f"the recipient is {recipient.status}, not delivered"
        # A timeline row, so the email's detail shows when and why it turned.
        await email_store.insert_attempts(conn, [_timeline_row(email, recipient, outcome, now)])
        self.metrics.recipient_outcomes.labels(status=str(outcome.status)).inc()
        # The list is read once per report: a second entry for the same recipient must
        # see this move.
        recipients[recipients.index(recipient)] = _moved(recipient, outcome.status)
        return None


def _timeline_row(
    email: Email, recipient: Recipient, outcome: Outcome, now: datetime
) -> dict[str, Any]:
    """The report's row in the recipient's timeline: no attempt of ours (its number is
    the delivery's), so a breaker never counts it (``AttemptScope.REPORT``)."""
    return {
        "email_id": email.id,
        "recipient_id": recipient.id,
        "attempt_id": new_id("att_"),
        "destination": recipient.destination,
        "attempt": recipient.attempts,
        "status": str(outcome.status),
        "scope": str(AttemptScope.REPORT),
        "mx_host": None,
        "smtp_code": outcome.smtp_code,
        "enhanced_code": outcome.enhanced_code,
        "response": outcome.response,
        "bounce_type": str(outcome.bounce_type) if outcome.bounce_type else None,
        "bounce_rule": outcome.bounce_rule,
        "duration_ms": 0,
        **email_store.tls_columns(None),
        "created_at": now,
    }


def _moved(recipient: Recipient, status: RecipientStatus) -> Recipient:
    return dataclasses.replace(recipient, status=status)


def _match(entry: Entry, recipients: list[Recipient]) -> Recipient | None:
    """The recipient an entry is about: by any address it gives, else the only one.

    A complaint may name a redacted address (Yahoo's, Microsoft's To): the email is
    known by its return path, so a one-recipient email is still unambiguous. A bounce
    naming someone else is not taken for the only recipient: it may be a forward's.
    """
    by_address = {r.address.lower(): r for r in recipients}
    for address in entry.addresses:
        if address in by_address:
            return by_address[address]
    unnamed = not entry.addresses or entry.action == "complaint"
    if unnamed and len(recipients) == 1:
        return recipients[0]
    return None


def _unmatched_row(
    received: Received, report: Report | None, result: _Result, now: datetime
) -> dict[str, Any]:
    subject = None
    try:
        subject = header(parse_message(received.raw[: EXCERPT_BYTES * 8]), "Subject")
    except Exception:  # the excerpt is for people; an unreadable subject is no reason to fail
        subject = None
    excerpt = received.raw[:EXCERPT_BYTES].decode("utf-8", errors="replace").replace("\x00", "")
    return {
        "id": new_id("inb_"),
        "received_at": now,
        "mail_from": sanitize(received.mail_from)[:320],
        "rcpt_to": sanitize(received.rcpt_to)[:320],
        "kind": str(report.kind) if report is not None else None,
        "shape": report.shape if report is not None else None,
        "reason": sanitize("; ".join(dict.fromkeys(result.reasons)))[:200],
        "email_id": result.email_id,
        "subject": sanitize(subject)[:1000] if subject else None,
        "size": len(received.raw),
        "excerpt": excerpt,
    }
