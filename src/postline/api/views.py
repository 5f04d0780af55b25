"""Rows to the JSON shapes of the API (docs/API.md)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar

from postline.addresses import quoted_from
from postline.model import EmailStatus, RecipientStatus
from postline.store.emails import Attempt, Email, Event, Notification, Recipient


def page(data: list[Any], next_cursor: str | None) -> dict[str, Any]:
    """A list answer: Postline's ``data`` and ``next_cursor``, and Resend's ``object`` and
    ``has_more``."""
    return {
        "object": "list",
        "data": data,
        "has_more": next_cursor is not None,
        "next_cursor": next_cursor,
    }


class _Keyed(Protocol):
    @property
    def id(self) -> str: ...


Row = TypeVar("Row", bound=_Keyed)


def keyset_page(rows: Sequence[Row], limit: int, view: Callable[[Row], Any]) -> dict[str, Any]:
    """The list answer of ``rows`` read with ``limit + 1``: the extra row only says there is
    a next page, whose cursor is the id of the last row shown."""
    shown = rows[:limit]
    return page([view(r) for r in shown], shown[-1].id if len(rows) > limit else None)


def rfc3339(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


#: Resend's ``last_event`` for each of Postline's email statuses (docs/API.md).
_LAST_EVENTS: dict[str, str] = {
    EmailStatus.SCHEDULED: "scheduled",
    EmailStatus.QUEUED: "queued",
    EmailStatus.SENDING: "sent",
    EmailStatus.DEFERRED: "delivery_delayed",
    EmailStatus.DELIVERED: "delivered",
    EmailStatus.PARTIALLY_DELIVERED: "delivered",
    EmailStatus.BOUNCED: "bounced",
    EmailStatus.FAILED: "failed",
    EmailStatus.SUPPRESSED: "failed",
    EmailStatus.CANCELLED: "canceled",
}


def last_event(status: str, complained: bool = False) -> str:
    """Resend's name for where the email stands; ``complained`` once a recipient did."""
    if complained:
        return "complained"
    return _LAST_EVENTS.get(status, "queued")


def email_item(
    row: Email, recipient_count: int, to: list[str], complained: bool = False
) -> dict[str, Any]:
    return {
        "object": "email",
        "id": row.id,
        "message_id": row.message_id,
        "from": quoted_from(row.from_header, row.from_address),
        "to": to,
        "subject": row.subject,
        "status": row.status,
        "last_event": last_event(row.status, complained),
        "source": row.source,
        "created_at": rfc3339(row.created_at),
        "updated_at": rfc3339(row.updated_at),
        "scheduled_at": rfc3339(row.scheduled_at),
        "recipient_count": recipient_count,
        "tags": dict(row.tags or {}),
        # Set on mail Postline wrote about another email (a DSN): that email.
        "original_email_id": row.original_email_id,
    }


def email_detail(
    email: Email,
    recipients: list[Recipient],
    attempts: list[Attempt],
    events: list[Event],
    notifications: list[Notification],
) -> dict[str, Any]:
    timelines: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for attempt in attempts:
        timelines[attempt.recipient_id].append(
            {
                "attempt": attempt.attempt,
                "status": attempt.status,
                "mx_host": attempt.mx_host,
                "smtp_code": attempt.smtp_code,
                "enhanced_code": attempt.enhanced_code,
                "response": attempt.response,
                # The class of this attempt's failure, a deferral's included.
                "bounce_type": attempt.bounce_type,
                "bounce_rule": attempt.bounce_rule,
                "duration_ms": attempt.duration_ms,
                "tls_version": attempt.tls_version,
                "tls_policy": attempt.tls_policy,
                "tls_verified": attempt.tls_verified,
                "at": rfc3339(attempt.created_at),
            }
        )
    by_id = {r.id: r.address for r in recipients}
    body = email_item(
        email,
        len(recipients),
        [r.address for r in recipients if r.kind == "to"],
        complained=any(r.status == RecipientStatus.COMPLAINED for r in recipients),
    )
    body["recipients"] = [
        {
            "address": r.address,
            "kind": r.kind,
            "status": r.status,
            "smtp_code": r.smtp_code,
            "enhanced_code": r.enhanced_code,
            "response": r.response,
            # Only a bounced recipient bounced: a deferral's class is in its timeline.
            "bounce_type": r.bounce_type if r.status == RecipientStatus.BOUNCED else None,
            "bounce_rule": r.bounce_rule,
            "attempts": r.attempts,
            "next_attempt_at": rfc3339(r.next_attempt_at),
            "updated_at": rfc3339(r.updated_at),
            "timeline": timelines.get(r.id, []),
        }
        for r in recipients
    ]
    body["events"] = [
        {
            "id": e.id,
            "type": e.type,
            "recipient": by_id.get(e.recipient_id) if e.recipient_id else None,
            "sequence": e.sequence,
            "created_at": rfc3339(e.created_at),
        }
        for e in events
    ]
    # The DSNs sent about this email: not in the send log, so shown here.
    body["notifications"] = [
        {
            "id": n.id,
            "type": n.source,
            "recipient": n.recipient,
            "status": n.status,
            "created_at": rfc3339(n.created_at),
            "updated_at": rfc3339(n.updated_at),
        }
        for n in notifications
    ]
    return body
