"""/v1/recipients/{address}: "why didn't they get it?" for one address.

Every email to the address the key may see with where it stands, the suppression
that stops it (and its cause), and the destination's circuit breaker with the next
attempt: the answer support needs, in one request, for scripts and the dashboard alike.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from postline.api import answers, destinations, suppressions
from postline.api.auth import Reader, Svc
from postline.api.problems import Problem
from postline.api.views import rfc3339
from postline.model import PENDING_STATUSES
from postline.store import emails as email_store
from postline.store import suppressions as suppression_store
from postline.store.emails import Email, Recipient

router = APIRouter(prefix="/v1/recipients", tags=["emails"])

#: Suppressions of one address: one per domain at most, so a page always holds them all.
_SUPPRESSIONS = 500


def email_view(row: Recipient, email: Email) -> dict[str, Any]:
    return {
        "email_id": email.id,
        "subject": email.subject,
        "from": email.from_address,
        "created_at": rfc3339(email.created_at),
        "kind": row.kind,
        "status": row.status,
        "smtp_code": row.smtp_code,
        "enhanced_code": row.enhanced_code,
        "response": row.response,
        "bounce_type": row.bounce_type,
        "bounce_rule": row.bounce_rule,
        "attempts": row.attempts,
        "next_attempt_at": rfc3339(row.next_attempt_at),
        "updated_at": rfc3339(row.updated_at),
    }


@router.get(
    "/{address}",
    summary="One address: its emails, suppressions and destination",
    response_model=answers.RecipientLookup,
)
async def lookup_recipient(
    svc: Svc,
    caller: Reader,
    address: str,
    limit: Annotated[int, Query(ge=1, le=500, description="Emails shown, newest first")] = 50,
) -> dict[str, Any]:
    wanted = address.strip().lower()
    local, at, destination = wanted.rpartition("@")
    if not at or not local or not destination or len(wanted) > 320:
        message = "must be an email address, local@domain"
        raise Problem(422, f"address: {message}", [{"field": "address", "message": message}])
    async with svc.db.read() as conn:
        rows = await email_store.recipients_by_address(
            conn, wanted, caller.domain_id, not caller.is_admin, limit
        )
        emails = {e.id: e for e in await email_store.get_emails(conn, {r.email_id for r in rows})}
        where = suppression_store.SuppressionFilter(caller.domain_id, wanted, None)
        held = await suppression_store.list_suppressions(conn, where, None, _SUPPRESSIONS)
    breakers = await destinations.live_breakers(svc)
    breaker = breakers.view(rows[0].destination if rows else destination)
    waiting = [
        r.next_attempt_at for r in rows if r.status in PENDING_STATUSES and r.next_attempt_at
    ]
    return {
        "object": "recipient",
        "address": wanted,
        "emails": [email_view(r, emails[r.email_id]) for r in rows if r.email_id in emails],
        "suppressions": [suppressions.view(s) for s in held],
        # A scoped key sees the state only: the counts and errors are other domains' too.
        "destination": {
            "domain": breaker.domain,
            "breaker": str(breaker.state),
            "breaker_until": rfc3339(breaker.until),
        },
        "next_attempt_at": rfc3339(min(waiting)) if waiting else None,
    }
