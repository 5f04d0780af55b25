"""/v1/suppressions: addresses a domain never sends to."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.ext.asyncio import AsyncConnection

from postline.api import answers
from postline.api.auth import SuppressionManager, Svc, domain_in_scope
from postline.api.cursors import page_after
from postline.api.problems import Problem
from postline.api.responses import problem_responses
from postline.api.schemas import Address
from postline.api.views import keyset_page, rfc3339
from postline.ids import new_id
from postline.keys import Principal
from postline.store import suppressions as suppression_store
from postline.store.suppressions import Suppression
from postline.store.types import utcnow

router = APIRouter(
    prefix="/v1/suppressions",
    tags=["suppressions"],
)

Reason = Literal["hard_bounce", "complaint", "manual", "unsubscribe"]


class SuppressionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    address: Address
    domain: str | None = Field(default=None, max_length=253)
    reason: Reason = "manual"
    detail: str | None = Field(default=None, max_length=1000)


def view(row: Suppression) -> dict[str, Any]:
    return {
        "id": row.id,
        "address": row.address,
        "domain": row.domain_name,
        "reason": row.reason,
        "source_email_id": row.source_email_id,
        "detail": row.detail,
        "created_at": rfc3339(row.created_at),
        "expires_at": rfc3339(row.expires_at),  # set for domain-level bounces only
    }


async def _domain_id(
    conn: AsyncConnection, caller: Principal, name: str | None, *, required: bool
) -> str | None:
    """The domain a request is about: a scoped key's own, or the one named."""
    if name is None:
        if caller.domain_id is None and required:
            raise Problem(
                422,
                "name the sending domain",
                [{"field": "domain", "message": "required with an unscoped key"}],
            )
        return caller.domain_id
    return await domain_in_scope(conn, caller, name)


@router.get(
    "",
    summary="The suppression list",
    response_model=answers.SuppressionList,
    responses=problem_responses(403),  # a scoped key naming another domain
)
async def list_suppressions(
    svc: Svc,
    caller: SuppressionManager,
    domain: str | None = None,
    address: str | None = None,
    reason: Reason | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    after = page_after(cursor, "sup_")
    async with svc.db.read() as conn:
        domain_id = await _domain_id(conn, caller, domain, required=False)
        where = suppression_store.SuppressionFilter(domain_id, address, reason)
        rows = await suppression_store.list_suppressions(conn, where, after, limit + 1)
    return keyset_page(rows, limit, view)


@router.post(
    "",
    status_code=201,
    summary="Suppress an address",
    response_model=answers.Suppression,
    responses=problem_responses(403, 409),
)
async def add_suppression(
    svc: Svc, caller: SuppressionManager, body: SuppressionIn
) -> dict[str, Any]:
    async with svc.db.write() as conn:
        domain_id = await _domain_id(conn, caller, body.domain, required=True)
        assert domain_id is not None
        new = new_id("sup_")
        inserted = await suppression_store.add_suppression(
            conn,
            suppression_id=new,
            domain_id=domain_id,
            address=body.address,
            reason=body.reason,
            now=utcnow(),
            detail=body.detail,
        )
        if not inserted:
            raise Problem(409, f"{body.address} is already suppressed for this domain")
        row = await suppression_store.get_suppression(conn, new)
    assert row is not None
    return view(row)


async def _visible(conn: AsyncConnection, caller: Principal, suppression_id: str) -> Suppression:
    row = await suppression_store.get_suppression(conn, suppression_id)
    if row is None or not caller.may_see(row.domain_id):
        raise Problem(404, f"no suppression {suppression_id}")
    return row


@router.get("/{suppression_id}", summary="One suppression", response_model=answers.Suppression)
async def get_suppression(
    svc: Svc, caller: SuppressionManager, suppression_id: str
) -> dict[str, Any]:
    async with svc.db.read() as conn:
        return view(await _visible(conn, caller, suppression_id))


@router.delete("/{suppression_id}", status_code=204, summary="Remove a suppression")
async def delete_suppression(svc: Svc, caller: SuppressionManager, suppression_id: str) -> Response:
    async with svc.db.write() as conn:
        await _visible(conn, caller, suppression_id)
        await suppression_store.delete_suppression(conn, suppression_id)
    return Response(status_code=204)
