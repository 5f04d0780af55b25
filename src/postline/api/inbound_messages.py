"""/v1/inbound: the mail inbound routes took (``read`` keys; a scoped key sees its
domain's only).

The same message the ``email.received`` event announced, for a receiver that missed
the event or wants it again: the list reads only each message's header, one message
is parsed again from its raw bytes (kept, not its parse), and ``/raw`` is the bytes.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from postline.api import answers
from postline.api.auth import Reader, Svc, domain_in_scope
from postline.api.cursors import page_after
from postline.api.problems import Problem
from postline.api.responses import problem_responses
from postline.api.views import keyset_page, rfc3339
from postline.inbound.received import summarize
from postline.inbound.routed import parse_received, raw_path, received_data
from postline.keys import Principal
from postline.store import inbound_routes as route_store
from postline.store.inbound_routes import InboundMessage, InboundSummary

router = APIRouter(prefix="/v1/inbound", tags=["inbound"])


def item(row: InboundSummary) -> dict[str, Any]:
    return {
        "object": "inbound_message",
        "id": row.id,
        "route_id": row.route_id,
        "domain": row.domain,
        "received_at": rfc3339(row.received_at),
        "mail_from": row.mail_from,
        "rcpt_to": row.rcpt_to,
        "size": row.size,
        **summarize(row.head),
        "raw_url": raw_path(row.id),
    }


@router.get(
    "",
    summary="Mail inbound routes took, newest first",
    response_model=answers.InboundMessageList,
    responses=problem_responses(403),
)
async def list_messages(
    svc: Svc,
    caller: Reader,
    domain: Annotated[str | None, Query(description="Only this sending domain's")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    after = page_after(cursor, "inm_")
    async with svc.db.read() as conn:
        # A scoped key lists its own domain's; naming another is the same 403 as anywhere.
        domain_id = caller.domain_id
        if domain is not None:
            domain_id = await domain_in_scope(conn, caller, domain)
        rows = await route_store.list_messages(conn, domain_id, after, limit + 1)
    # Headers parse off the event loop: up to 500 of them, 16 KiB each.
    return await asyncio.to_thread(keyset_page, rows, limit, item)


async def _visible(svc: Svc, caller: Principal, inbound_id: str) -> InboundMessage:
    async with svc.db.read() as conn:
        row = await route_store.get_message(conn, inbound_id)
    if row is None or not caller.may_see(row.domain_id):
        raise Problem(404, f"no inbound message {inbound_id}")
    return row


@router.get(
    "/{inbound_id}",
    summary="One message an inbound route took, parsed as its email.received event",
    response_model=answers.InboundMessageDetail,
    responses=problem_responses(404),
)
async def get_message(svc: Svc, caller: Reader, inbound_id: str) -> dict[str, Any]:
    row = await _visible(svc, caller, inbound_id)
    async with svc.db.read() as conn:
        domain = await route_store.domain_name(conn, row.domain_id) or ""
    parsed = await asyncio.to_thread(parse_received, row.raw)
    data = received_data(
        row.id,
        row.route_id,
        domain,
        row.mail_from,
        row.rcpt_to,
        rfc3339(row.received_at),
        row.size,
        parsed,
    )
    return {"object": "inbound_message", "id": row.id, **data}


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
    row = await _visible(svc, caller, inbound_id)
    return Response(content=row.raw, media_type="message/rfc822")
