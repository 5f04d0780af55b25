"""The pages that change things: suppressions, webhooks, domains and the queue's
breakers. Each form posts with the session's CSRF token and calls the API's route
function as the signed-in key; the answer is a redirect back with what happened."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.responses import Response

from postline.api import admin as admin_api
from postline.api import destinations as destinations_api
from postline.api import suppressions as suppressions_api
from postline.api import webhooks as webhooks_api
from postline.api.auth import services
from postline.api.problems import Problem
from postline.api.schemas import DomainPatch
from postline.dashboard import web
from postline.dashboard.guard import Form, Me, PageRoute, back, require
from postline.dashboard.pages import _text

router = APIRouter(route_class=PageRoute, include_in_schema=False)

#: Deliveries shown under each webhook endpoint.
RECENT_DELIVERIES = 10


def _invalid(exc: ValidationError) -> Problem:
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in first["loc"])
    return Problem(422, f"{where}: {first['msg']}")


# -- suppressions ---------------------------------------------------------------------------


@router.get("/suppressions")
async def suppressions(request: Request, me: Me) -> Response:
    require(me, "suppressions")
    q = request.query_params
    answer = await suppressions_api.list_suppressions(
        services(request),
        me.caller,
        address=_text(q.get("address")),
        limit=100,
        cursor=_text(q.get("cursor")),
    )
    return web.render(
        request,
        "suppressions.html",
        me,
        page="suppressions",
        rows=answer["data"],
        address=q.get("address", ""),
        next=answer["next_cursor"],
    )


@router.post("/suppressions")
async def add_suppression(request: Request, me: Me, fields: Form) -> Response:
    require(me, "suppressions")
    try:
        body = suppressions_api.SuppressionIn(
            address=fields.get("address", "").strip(),
            domain=_text(fields.get("domain")),
            detail=_text(fields.get("detail")),
        )
    except ValidationError as exc:
        raise _invalid(exc) from None
    row = await suppressions_api.add_suppression(services(request), me.caller, body)
    return web.redirect(request, back(request), ("ok", f"Suppressed {row['address']}."))


@router.post("/suppressions/{suppression_id}/remove")
async def remove_suppression(request: Request, me: Me, _: Form, suppression_id: str) -> Response:
    require(me, "suppressions")
    svc = services(request)
    row = await suppressions_api.get_suppression(svc, me.caller, suppression_id)
    await suppressions_api.delete_suppression(svc, me.caller, suppression_id)
    text = f"{row['address']} is no longer suppressed; new mail to it will be sent."
    return web.redirect(request, back(request), ("ok", text))


# -- webhooks -------------------------------------------------------------------------------


async def _webhooks_page(request: Request, me: Me, secret: dict[str, Any] | None) -> Response:
    require(me, "webhooks")
    svc = services(request)
    endpoints = (await webhooks_api.list_webhooks(svc, me.caller))["data"]
    for endpoint in endpoints:
        recent = await webhooks_api.list_deliveries(
            svc, me.caller, endpoint["id"], limit=RECENT_DELIVERIES
        )
        endpoint["deliveries"] = recent["data"]
    return web.render(
        request, "webhooks.html", me, page="webhooks", endpoints=endpoints, secret=secret
    )


@router.get("/webhooks")
async def webhooks(request: Request, me: Me) -> Response:
    return await _webhooks_page(request, me, None)


@router.post("/webhooks/{webhook_id}/test")
async def send_test(request: Request, me: Me, _: Form, webhook_id: str) -> Response:
    require(me, "webhooks")
    sent = await webhooks_api.send_test(services(request), me.caller, webhook_id)
    return web.redirect(request, "/webhooks", ("ok", f"Test event {sent['event_id']} queued."))


@router.post("/webhooks/{webhook_id}/deliveries/{delivery_id}/replay")
async def replay(request: Request, me: Me, _: Form, webhook_id: str, delivery_id: str) -> Response:
    require(me, "webhooks")
    await webhooks_api.replay(services(request), me.caller, webhook_id, delivery_id)
    return web.redirect(request, "/webhooks", ("ok", f"Delivery {delivery_id} replayed."))


@router.post("/webhooks/{webhook_id}/rotate")
async def rotate(request: Request, me: Me, _: Form, webhook_id: str) -> Response:
    """The new secret is shown on this answer only: not a redirect, nothing stored."""
    require(me, "webhooks")
    rotated = await webhooks_api.rotate_secret(services(request), me.caller, webhook_id)
    return await _webhooks_page(request, me, rotated)


# -- domains --------------------------------------------------------------------------------


@router.get("/domains")
async def domains(request: Request, me: Me) -> Response:
    require(me, "read")
    answer = await admin_api.list_domains(services(request), me.caller)
    return web.render(request, "domains.html", me, page="domains", domains=answer["data"])


@router.post("/domains/{domain_id}/verify")
async def verify(request: Request, me: Me, _: Form, domain_id: str) -> Response:
    require(me, "admin")
    row = await admin_api.verify(services(request), me.caller, domain_id)
    return web.redirect(request, "/domains", ("ok", f"{row['name']}: {row['status']}."))


@router.post("/domains/{domain_id}/bounce-notifications")
async def bounce_notifications(request: Request, me: Me, fields: Form, domain_id: str) -> Response:
    require(me, "admin")
    wanted = fields.get("enabled") == "true"
    body = DomainPatch(bounce_notifications=wanted)
    row = await admin_api.patch_domain(services(request), me.caller, domain_id, body)
    state = "on" if row["bounce_notifications"] else "off"
    return web.redirect(
        request, "/domains", ("ok", f"{row['name']}: bounce notifications {state}.")
    )


# -- the queue ------------------------------------------------------------------------------


def _admin_only(me: Me) -> None:
    require(me, "admin")
    if not me.caller.is_admin:
        raise Problem(403, "The queue is shared by every domain: it needs an unscoped key.")


@router.get("/queue")
async def queue(request: Request, me: Me) -> Response:
    _admin_only(me)
    answer = await destinations_api.list_destinations(services(request), me.caller)
    return web.render(request, "queue.html", me, page="queue", destinations=answer["data"])


@router.post("/queue/breaker")
async def breaker_by_name(request: Request, me: Me, fields: Form) -> Response:
    """The form that opens the breaker of a destination not listed (yet)."""
    return await _set_breaker(request, me, fields.get("domain", "").strip(), fields)


@router.post("/queue/{domain}/breaker")
async def breaker(request: Request, me: Me, fields: Form, domain: str) -> Response:
    return await _set_breaker(request, me, domain, fields)


async def _set_breaker(request: Request, me: Me, domain: str, fields: dict[str, str]) -> Response:
    _admin_only(me)
    try:
        body = destinations_api.BreakerIn.model_validate({"state": fields.get("state")})
    except ValidationError as exc:
        raise _invalid(exc) from None
    row = await destinations_api.set_breaker(services(request), me.caller, domain, body)
    return web.redirect(request, "/queue", ("ok", f"{row['domain']}: breaker {row['breaker']}."))
