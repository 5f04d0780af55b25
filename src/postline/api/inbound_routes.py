"""/v1/inbound-routes: which addresses the inbound listener takes mail for.

Scoped like domains: a route belongs to the sending domain its match's domain is, or
is a subdomain of (``*@in.example.com`` belongs to ``example.com``), and only keys that
may use that domain see or change it; it needs the ``admin`` scope. Mail a route takes
fires ``email.received`` to that domain's webhooks (``postline.inbound.routed``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.ext.asyncio import AsyncConnection

from postline.api import answers
from postline.api.admin import DELETED, deleted
from postline.api.auth import Operator, Svc
from postline.api.cursors import page_after
from postline.api.problems import Problem
from postline.api.responses import problem_responses
from postline.api.views import keyset_page, rfc3339
from postline.domains import inbound_mx
from postline.ids import new_id
from postline.keys import Principal
from postline.store import domains as domain_store
from postline.store import inbound_routes as route_store
from postline.store.inbound_routes import InboundRoute
from postline.store.types import utcnow
from postline.validation import normalize_address

router = APIRouter(prefix="/v1/inbound-routes", tags=["inbound"])


class InboundRouteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    match: str = Field(
        min_length=3,
        max_length=320,
        description="`user@domain`, or `*@domain` for every address of the domain",
    )
    events: bool = Field(default=True, description="Fire `email.received` for mail it takes")

    @field_validator("match")
    @classmethod
    def _address(cls, value: str) -> str:
        local, _, domain = value.strip().rpartition("@")
        if local == "*":
            return "*@" + normalize_address(f"x@{domain}").rpartition("@")[2]
        return normalize_address(value)


def view(row: InboundRoute, domain: str, hostname: str) -> dict[str, Any]:
    mx = inbound_mx(row.match.rpartition("@")[2], hostname)
    return {
        "object": "inbound_route",
        "id": row.id,
        "match": row.match,
        "domain": domain,
        "events": row.events,
        "mx": {"type": mx.type, "name": mx.name, "value": mx.value, "purpose": mx.purpose},
        "created_at": rfc3339(row.created_at),
    }


def _parents(name: str) -> list[str]:
    """``in.example.com``, ``example.com``, ``com``: the names a sending domain may have."""
    labels = name.split(".")
    return [".".join(labels[i:]) for i in range(len(labels))]


async def owning_domain(conn: AsyncConnection, caller: Principal, match: str) -> tuple[str, str]:
    """The (id, name) of the sending domain the match belongs to: the most specific one
    this key may use, or the same 403 (422 for an admin key) whatever exists."""
    problem = Problem(
        422 if caller.is_admin else 403,
        f"unknown or forbidden domain of {match}",
        [{"field": "match", "message": "not a sending domain (or a subdomain of one) of this key"}],
    )
    for name in _parents(match.rpartition("@")[2]):
        if not caller.is_admin and name != caller.domain_name:
            continue
        row = await domain_store.get_domain_by_name(conn, name)
        if row is not None and caller.may_see(row.id):
            return row.id, row.name
    raise problem


async def _visible(conn: AsyncConnection, caller: Principal, route_id: str) -> InboundRoute:
    row = await route_store.get_route(conn, route_id)
    if row is None or not caller.may_see(row.domain_id):
        raise Problem(404, f"no inbound route {route_id}")
    return row


async def _name(conn: AsyncConnection, row: InboundRoute) -> str:
    return await route_store.domain_name(conn, row.domain_id) or ""


@router.post(
    "",
    status_code=201,
    summary="Route an address (or a whole domain) to the domain's webhooks",
    response_model=answers.InboundRoute,
    responses=problem_responses(403, 409, 422),
)
async def create_route(svc: Svc, caller: Operator, body: InboundRouteIn) -> dict[str, Any]:
    async with svc.db.write() as conn:
        domain_id, domain = await owning_domain(conn, caller, body.match)
        if await route_store.route_by_match(conn, body.match) is not None:
            raise Problem(409, f"a route for {body.match} exists already")
        route_id = new_id("inr_")
        await route_store.add_route(
            conn,
            {
                "id": route_id,
                "domain_id": domain_id,
                "match": body.match,
                "events": body.events,
                "created_at": utcnow(),
            },
        )
        row = await route_store.get_route(conn, route_id)
    assert row is not None
    return view(row, domain, svc.settings.hostname)


@router.get(
    "",
    summary="Inbound routes visible to this key",
    response_model=answers.InboundRouteList,
)
async def list_routes(
    svc: Svc,
    caller: Operator,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    after = page_after(cursor, "inr_")
    async with svc.db.read() as conn:
        rows = await route_store.list_routes(conn, caller.domain_id, after, limit + 1)
        names = {row.domain_id: await _name(conn, row) for row in rows}
    return keyset_page(rows, limit, lambda r: view(r, names[r.domain_id], svc.settings.hostname))


@router.get(
    "/{route_id}",
    summary="One inbound route",
    response_model=answers.InboundRoute,
    responses=problem_responses(404),
)
async def get_route(svc: Svc, caller: Operator, route_id: str) -> dict[str, Any]:
    async with svc.db.read() as conn:
        row = await _visible(conn, caller, route_id)
        domain = await _name(conn, row)
    return view(row, domain, svc.settings.hostname)


@router.delete(
    "/{route_id}",
    status_code=204,
    summary="Stop taking mail for the route's match",
    responses={**DELETED, **problem_responses(404)},
)
async def delete_route(svc: Svc, caller: Operator, route_id: str, request: Request) -> Response:
    async with svc.db.write() as conn:
        await _visible(conn, caller, route_id)
        await route_store.delete_route(conn, route_id)
    return deleted(request, "inbound_route", route_id)
