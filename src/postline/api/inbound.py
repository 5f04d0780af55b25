"""/v1/inbound: what the inbound listener took and could not apply (admin keys only),
and the raw bytes of mail an inbound route took (``read`` keys of its domain).

Late bounces and complaints that parsed and matched show on their emails; this lists
the rest with the reason, so that nothing mailed to a return path vanishes unseen.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from postline.api import answers
from postline.api.auth import Admin, Reader, Svc
from postline.api.cursors import page_after
from postline.api.problems import Problem
from postline.api.responses import problem_responses
from postline.api.views import keyset_page, rfc3339
from postline.store import inbound as inbound_store
from postline.store import inbound_routes as route_store
from postline.store.inbound import Unmatched

router = APIRouter(prefix="/v1/inbound", tags=["inbound"])


def view(row: Unmatched) -> dict[str, Any]:
    return {
        "object": "inbound_message",
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
    "",
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


@router.get(
    "/{inbound_id}/raw",
    summary="The raw message an inbound route took, byte for byte",
    response_class=Response,
    responses={
        200: {
            "content": {"message/rfc822": {"schema": {"type": "string", "format": "binary"}}},
            "description": "The message as received",
        },
        **problem_responses(404),
    },
)
async def raw_message(svc: Svc, caller: Reader, inbound_id: str) -> Response:
    async with svc.db.read() as conn:
        row = await route_store.get_message(conn, inbound_id)
    if row is None or not caller.may_see(row.domain_id):
        raise Problem(404, f"no inbound message {inbound_id}")
    return Response(content=row.raw, media_type="message/rfc822")
