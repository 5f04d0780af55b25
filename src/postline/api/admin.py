"""/v1/domains and /v1/api-keys: managing who may send from where."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from postline.api import answers
from postline.api.auth import Admin, Caller, Operator, Reader, Svc
from postline.api.cursors import SinglePageCursor, single_page
from postline.api.problems import Problem
from postline.api.responses import problem_responses
from postline.api.schemas import DomainIn, DomainPatch, KeyIn
from postline.api.views import page, rfc3339
from postline.config import Settings
from postline.domains import DomainError, create_domain, dns_records, verify_domain
from postline.keys import SCOPES, create_key, key_scopes
from postline.store import domains as domain_store
from postline.store import inbound_routes as route_store
from postline.store import keys as key_store
from postline.store.domains import Domain
from postline.store.keys import ApiKey
from postline.tracking.hosts import check_tracking_host, cname_target

router = APIRouter(
    prefix="/v1",
    tags=["domains and keys"],
)


#: A domain's answer: its DNS records carry ``status`` only once checked, so keys the
#: view left out stay out (``exclude_unset``) rather than appearing as null.
_DOMAIN: dict[str, Any] = {"response_model": answers.Domain, "response_model_exclude_unset": True}


def domain_view(
    row: Domain, settings: Settings, inbound_domains: Sequence[str] = ()
) -> dict[str, Any]:
    checks = row.verification or {}
    records = []
    target = cname_target(settings.tracking_url, settings.hostname)
    for record in dns_records(row, settings.hostname, inbound_domains, target):
        item = {
            "type": record.type,
            "name": record.name,
            "value": record.value,
            "purpose": record.purpose,
        }
        if record.purpose in checks:
            item["status"] = checks[record.purpose]
        records.append(item)
    return {
        "object": "domain",
        "id": row.id,
        "name": row.name,
        "dkim_selector": row.dkim_selector,
        "dns_records": records,
        "records": records,  # Resend's name for them
        "verified": row.verified,
        "status": domain_status(row.verified, checks),
        "bounce_notifications": row.bounce_notifications,
        "tracking": {
            "opens": row.track_opens,
            "clicks": row.track_clicks,
            "host": row.tracking_host,
        },
        "created_at": rfc3339(row.created_at),
    }


def domain_status(verified: bool, checks: dict[str, str]) -> str:
    """Resend's ``status``: ``verified``; ``not_started`` before any check; ``pending``
    while some record checks out and another not yet; ``failed`` when none does."""
    if verified:
        return "verified"
    if not checks:
        return "not_started"
    return "pending" if "verified" in checks.values() else "failed"


#: A DELETE answers 204 with no body; the Resend SDKs read a JSON body from every
#: answer, so a client that asks for JSON by name gets Resend's ``deleted`` object.
DELETED: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Deleted: the answer to a client whose `Accept` names"
        " `application/json` (the Resend SDKs)",
        "model": answers.Deleted,
    },
    204: {"description": "Deleted"},
}


def deleted(request: Request, kind: str, object_id: str) -> Response:
    """204, or 200 with ``{"object", "id", "deleted": true}`` to a client that asks for JSON."""
    if "application/json" in request.headers.get("accept", "").lower():
        return JSONResponse({"object": kind, "id": object_id, "deleted": True})
    return Response(status_code=204)


async def _routed_view(svc: Svc, row: Domain) -> dict[str, Any]:
    """``domain_view`` with the MX of each domain the domain's inbound routes take mail for."""
    async with svc.db.read() as conn:
        matches = await route_store.route_matches_of(conn, row.id)
    return domain_view(row, svc.settings, _inbound_domains(matches))


def _inbound_domains(matches: Sequence[str]) -> list[str]:
    return [m.rpartition("@")[2] for m in matches]


async def _visible_domain(svc: Svc, caller: Caller, domain_id: str) -> Domain:
    async with svc.db.read() as conn:
        row = await domain_store.get_domain(conn, domain_id)
    if row is None or not caller.may_see(row.id):
        raise Problem(404, f"no domain {domain_id}")
    return row


@router.post(
    "/domains",
    status_code=201,
    summary="Add a sending domain",
    responses=problem_responses(409),
    **_DOMAIN,
)
async def add_domain(svc: Svc, _: Admin, body: DomainIn) -> dict[str, Any]:
    try:
        row = await create_domain(svc.db, body.name)
    except DomainError as exc:
        status = 409 if "already exists" in str(exc) else 422
        raise Problem(status, str(exc), [{"field": "name", "message": str(exc)}]) from None
    return domain_view(row, svc.settings)


@router.get(
    "/domains",
    summary="Sending domains visible to this key",
    response_model=answers.DomainList,
    response_model_exclude_unset=True,
)
async def list_domains(svc: Svc, caller: Reader, cursor: SinglePageCursor = None) -> dict[str, Any]:
    single_page(cursor)
    async with svc.db.read() as conn:
        rows = await domain_store.list_domains(conn, caller.domain_id)
    return page([await _routed_view(svc, r) for r in rows], None)


@router.get("/domains/{domain_id}", summary="One sending domain", **_DOMAIN)
async def get_domain(svc: Svc, caller: Reader, domain_id: str) -> dict[str, Any]:
    return await _routed_view(svc, await _visible_domain(svc, caller, domain_id))


@router.patch(
    "/domains/{domain_id}",
    summary="Change a domain's settings",
    responses=problem_responses(409),
    **_DOMAIN,
)
async def patch_domain(
    svc: Svc, caller: Operator, domain_id: str, body: DomainPatch
) -> dict[str, Any]:
    row = await _visible_domain(svc, caller, domain_id)
    tracking = body.tracking
    try:
        async with svc.db.write() as conn:
            if tracking is not None and "host" in tracking.model_fields_set:
                host = await _tracking_host(conn, row, tracking.host)
                await domain_store.set_tracking_host(conn, domain_id, host)
            if body.bounce_notifications is not None:
                await domain_store.set_bounce_notifications(
                    conn, domain_id, body.bounce_notifications
                )
            if tracking is not None:
                await domain_store.set_tracking(
                    conn, domain_id, opens=tracking.opens, clicks=tracking.clicks
                )
    except IntegrityError:
        # Another domain took the host between the check and the update (unique index).
        raise Problem(409, "that tracking host is another domain's") from None
    return await _routed_view(svc, await _visible_domain(svc, caller, domain_id))


async def _tracking_host(conn: AsyncConnection, row: Domain, host: str | None) -> str | None:
    """The host asked for, checked: a name under the domain with no other record of the
    domain at it, and no other domain's tracking host (409)."""
    if host is None:
        return None
    taken = set(_inbound_domains(await route_store.route_matches_of(conn, row.id)))
    try:
        name = check_tracking_host(row.name, host, taken)
    except DomainError as exc:
        errors = [{"field": "tracking.host", "message": str(exc)}]
        raise Problem(422, f"tracking.host: {exc}", errors) from None
    owner = await domain_store.domain_with_tracking_host(conn, name)
    if owner is not None and owner != row.id:
        raise Problem(409, f"{name} is the tracking host of another domain")
    return name


@router.post("/domains/{domain_id}/verify", summary="Check the domain's DNS records now", **_DOMAIN)
async def verify(svc: Svc, caller: Operator, domain_id: str) -> dict[str, Any]:
    row = await _visible_domain(svc, caller, domain_id)
    settings = svc.settings
    target = cname_target(settings.tracking_url, settings.hostname)
    checked = await verify_domain(svc.db, svc.router.resolver, row, settings.hostname, target)
    return await _routed_view(svc, checked)


@router.delete(
    "/domains/{domain_id}",
    status_code=204,
    summary="Remove a sending domain",
    responses={**DELETED, **problem_responses(409)},
)
async def delete_domain(svc: Svc, caller: Admin, domain_id: str, request: Request) -> Response:
    await _visible_domain(svc, caller, domain_id)
    async with svc.db.write() as conn:
        if await domain_store.count_emails(conn, domain_id):
            raise Problem(409, "this domain has sent emails; its history would be lost")
        await domain_store.delete_domain(conn, domain_id)
    return deleted(request, "domain", domain_id)


def key_view(row: ApiKey) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "prefix": row.prefix,
        "domain": row.domain_name,
        "scopes": sorted(key_scopes(row.scopes), key=SCOPES.index),
        "expires_at": rfc3339(row.expires_at),
        "created_at": rfc3339(row.created_at),
        "last_used_at": rfc3339(row.last_used_at),
    }


@router.post(
    "/api-keys",
    status_code=201,
    summary="Create an API key (shown once)",
    response_model=answers.ApiKeyCreated,
)
async def add_key(svc: Svc, _: Admin, body: KeyIn) -> dict[str, Any]:
    domain = body.domain
    if body.domain_id is not None:
        async with svc.db.read() as conn:
            row = await domain_store.get_domain(conn, body.domain_id)
        if row is None:
            message = f"no domain {body.domain_id}"
            raise Problem(422, message, [{"field": "domain_id", "message": message}])
        domain = row.name
    try:
        created = await create_key(
            svc.db, body.name, domain, scopes=body.wanted_scopes, expires_at=body.expires_at
        )
    except (DomainError, ValueError) as exc:
        field = "domain" if isinstance(exc, DomainError) else _key_field(str(exc))
        raise Problem(422, str(exc), [{"field": field, "message": str(exc)}]) from None
    return {
        "object": "api_key",
        "id": created.id,
        "name": created.name,
        "key": created.key,
        "token": created.key,  # Resend's name for it
        "domain": created.domain,
        "scopes": created.scopes,
        "expires_at": rfc3339(created.expires_at),
    }


def _key_field(message: str) -> str:
    """The field a refusal of ``create_key`` is about."""
    for field in ("scope", "expires_at"):
        if field in message:
            return "scopes" if field == "scope" else field
    return "name"


@router.get("/api-keys", summary="API keys (no secrets)", response_model=answers.ApiKeyList)
async def list_keys(svc: Svc, _: Admin, cursor: SinglePageCursor = None) -> dict[str, Any]:
    single_page(cursor)
    async with svc.db.read() as conn:
        rows = await key_store.list_keys(conn)
    return page([key_view(r) for r in rows], None)


@router.delete(
    "/api-keys/{key_id}",
    status_code=204,
    summary="Revoke an API key at once",
    responses=DELETED,
)
async def revoke_key(svc: Svc, _: Admin, key_id: str, request: Request) -> Response:
    async with svc.db.write() as conn:
        if not await key_store.revoke_key(conn, key_id):
            raise Problem(404, f"no active API key {key_id}")
    return deleted(request, "api_key", key_id)
