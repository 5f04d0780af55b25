"""/v1/inbound/reports: what the inbound listener took and could not apply (admin keys
only).

Late bounces and complaints that parsed and matched show on their emails; this lists
the rest with the reason, so that nothing mailed to a return path vanishes unseen.
The mail inbound routes take is ``/v1/inbound`` itself (``api.inbound_messages``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from postline.api import answers
from postline.api.auth import Admin, Svc
from postline.api.cursors import page_after
from postline.api.views import keyset_page, rfc3339
from postline.store import inbound as inbound_store
from postline.store.inbound import Unmatched

router = APIRouter(prefix="/v1/inbound", tags=["inbound"])


def view(row: Unmatched) -> dict[str, Any]:
    return {
        "object": "inbound_report",
        "id": row.id,
        "received_at": rfc3339(row.received_at),
        "mail_from": row.mail_from,
        "rcpt_to": row.rcpt_to,
        "kind": row.kind,
        "shape": row.shape,
        "reason": row.reason,
        "email_id": row.email_id,
        "subject": row.subject,
        "size": row.size,
        "excerpt": row.excerpt,
    }


@router.get(
    "/reports",
    summary="Inbound reports that could not be applied",
    response_model=answers.InboundUnmatchedList,
)
async def list_unmatched(
    svc: Svc,
    _: Admin,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    after = page_after(cursor, "inb_")
    async with svc.db.read() as conn:
        rows = await inbound_store.list_unmatched(conn, after, limit + 1)
    return keyset_page(rows, limit, view)
