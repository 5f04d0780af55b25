"""/v1/webhooks: endpoints, their secrets, deliveries and replays."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.ext.asyncio import AsyncConnection

from postline.api import answers
from postline.api.auth import Svc, WebhookManager, domain_in_scope
from postline.api.cursors import SinglePageCursor, page_after, single_page
from postline.api.problems import Problem
from postline.api.responses import problem_responses
from postline.api.views import keyset_page, page, rfc3339
from postline.events.signing import new_secret
from postline.events.ssrf import UnsafeURL, checked_addresses
from postline.ids import new_id
from postline.keys import Principal
from postline.model import EventType
from postline.store import webhooks as webhook_store
from postline.store.types import utcnow
from postline.store.webhooks import Webhook, WebhookDelivery

router = APIRouter(
    prefix="/v1/webhooks",
    tags=["webhooks"],
)

EVENT_TYPES = frozenset(str(t) for t in EventType)
TEST_EVENT = "webhook.test"


def _check_events(value: list[str]) -> list[str]:
    unknown = sorted(set(value) - EVENT_TYPES - {"*"})
    if unknown:
        raise ValueError(f"unknown event types {unknown}; use {sorted(EVENT_TYPES)} or '*'")
    return sorted(set(value))


#: A bracketed IPv6 literal or a name, and an optional port; urlsplit lets
#: ``[::1]x`` through as the host ::1.
_HOSTPORT = re.compile(r"(\[[^\[\]]+\]|[^\[\]:]+)(:[0-9]*)?")


def _check_url(value: str) -> str:
    """Refuse a URL that cannot be parsed or whose host cannot be a DNS name or an IP
    literal, as a 422 of its own: ``http://[::1/``, a 64-character label or a name over
    253 characters used to reach the resolver and answer 500. Whether the address is
    allowed is ``events.ssrf``'s decision, after this."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a port that is not 0-65535
    except ValueError as exc:
        raise ValueError(f"not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("must start with http:// or https://")
    host = parts.hostname
    if not host:
        raise ValueError("the URL has no host")
    hostport = parts.netloc.rpartition("@")[2]
    if not _HOSTPORT.fullmatch(hostport):
        raise ValueError(f"{hostport[:80]!r} is not a host with an optional port")
    if hostport.startswith("["):
        try:
            ipaddress.IPv6Address(host.partition("%")[0])
        except ValueError:
            raise ValueError(f"[{host}] is not an IPv6 address") from None
        return value
    try:
        ascii_host = host.rstrip(".").encode("idna").decode("ascii")
    except UnicodeError:
        raise ValueError(f"{host[:80]!r} is not a valid host name") from None
    labels = ascii_host.split(".")
    if len(ascii_host) > 253 or any(not 1 <= len(label) <= 63 for label in labels):
        raise ValueError("the host name must be at most 253 characters in labels of 1 to 63")
    return value


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=8, max_length=2048)
    events: list[str] = Field(min_length=1, max_length=20)
    domain: str | None = Field(default=None, max_length=253)

    _events = field_validator("events")(_check_events)
    _url = field_validator("url")(_check_url)


class WebhookPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(default=None, min_length=8, max_length=2048)
    events: list[str] | None = Field(default=None, min_length=1, max_length=20)
    enabled: bool | None = None

    @field_validator("events")
    @classmethod
    def _events(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _check_events(value)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else _check_url(value)


def view(row: Webhook, secret: str | None = None) -> dict[str, Any]:
    body = {
        "id": row.id,
        "url": row.url,
        "events": list(row.events),
        "domain": row.domain_name,
        "enabled": row.enabled,
        "disabled_reason": row.disabled_reason,
        "created_at": rfc3339(row.created_at),
        "updated_at": rfc3339(row.updated_at),
    }
    if secret is not None:
        body["secret"] = secret
    return body


def delivery_view(row: WebhookDelivery) -> dict[str, Any]:
    return {
        "id": row.id,
        "event_id": row.event_id,
        "event_type": row.event_type,
        "status": row.status,
        "attempts": row.attempts,
        "next_attempt_at": rfc3339(row.next_attempt_at),
        "response_code": row.response_code,
        "response_body": row.response_body,
        "updated_at": rfc3339(row.updated_at),
    }


async def _check_address(svc: Svc, url: str) -> None:
    try:
        await checked_addresses(
            url, svc.router.resolver, allow_private=svc.settings.webhook_allow_private
        )
    except UnsafeURL as exc:
        raise Problem(422, str(exc), [{"field": "url", "message": str(exc)}]) from None


async def _visible(conn: AsyncConnection, caller: Principal, webhook_id: str) -> Webhook:
    row = await webhook_store.get_webhook(conn, webhook_id)
    # An unscoped endpoint (all domains) is managed with an unscoped key only.
    if row is None or not (caller.is_admin or row.domain_id == caller.domain_id):
        raise Problem(404, f"no webhook {webhook_id}")
    return row


@router.post(
    "",
    status_code=201,
    summary="Register a webhook endpoint (secret shown once)",
    response_model=answers.WebhookWithSecret,
    responses=problem_responses(403, 409),  # another domain; the most endpoints allowed
    openapi_extra=answers.webhook_links(201),
)
async def create_webhook(svc: Svc, caller: WebhookManager, body: WebhookIn) -> dict[str, Any]:
    await _check_address(svc, body.url)
    now = utcnow()
    secret = new_secret()
    webhook_id = new_id("wh_")
    async with svc.db.write() as conn:
        domain_id = caller.domain_id
        if body.domain is not None:
            domain_id = await domain_in_scope(conn, caller, body.domain)
        count = await webhook_store.count_webhooks(conn, domain_id)
        if count >= svc.settings.webhooks_per_domain:
            raise Problem(
                409,
                f"{'this domain' if domain_id else 'the unscoped endpoints'} already "
                f"{'has' if domain_id else 'are'} {count} webhook endpoints, the most "
                "allowed (POSTLINE_WEBHOOKS_PER_DOMAIN); delete one first",
            )
        await webhook_store.insert_webhook(
            conn,
            {
                "id": webhook_id,
                "url": body.url,
                "events": body.events,
                "secret": secret,
                "enabled": True,
                "domain_id": domain_id,
                "created_at": now,
                "updated_at": now,
            },
        )
        row = await webhook_store.get_webhook(conn, webhook_id)
    assert row is not None
    return view(row, secret)


@router.get("", summary="Webhook endpoints visible to this key", response_model=answers.WebhookList)
async def list_webhooks(
    svc: Svc, caller: WebhookManager, cursor: SinglePageCursor = None
) -> dict[str, Any]:
    single_page(cursor)
    async with svc.db.read() as conn:
        rows = await webhook_store.list_webhooks(conn, caller.domain_id)
    return page([view(r) for r in rows], None)


@router.get("/{webhook_id}", summary="One webhook endpoint", response_model=answers.Webhook)
async def get_webhook(svc: Svc, caller: WebhookManager, webhook_id: str) -> dict[str, Any]:
    async with svc.db.read() as conn:
        return view(await _visible(conn, caller, webhook_id))


@router.patch(
    "/{webhook_id}", summary="Change url, events or enabled", response_model=answers.Webhook
)
async def patch_webhook(
    svc: Svc, caller: WebhookManager, webhook_id: str, body: WebhookPatch
) -> dict[str, Any]:
    if body.url is not None:
        await _check_address(svc, body.url)
    values: dict[str, Any] = {"updated_at": utcnow()}
    if body.url is not None:
        values["url"] = body.url
    if body.events is not None:
        values["events"] = body.events
    if body.enabled is not None:
        values["enabled"] = body.enabled
        if body.enabled:
            values |= {"disabled_reason": None, "failing_since": None}
    async with svc.db.write() as conn:
        await _visible(conn, caller, webhook_id)
        await webhook_store.update_webhook(conn, webhook_id, values)
        row = await _visible(conn, caller, webhook_id)
    return view(row)


@router.delete("/{webhook_id}", status_code=204, summary="Remove an endpoint")
async def delete_webhook(svc: Svc, caller: WebhookManager, webhook_id: str) -> Response:
    async with svc.db.write() as conn:
        await _visible(conn, caller, webhook_id)
        await webhook_store.delete_webhook(conn, webhook_id)
    return Response(status_code=204)


@router.post(
    "/{webhook_id}/rotate-secret",
    summary="New secret; the old one signs 24 h more",
    response_model=answers.WebhookWithSecret,
)
async def rotate_secret(svc: Svc, caller: WebhookManager, webhook_id: str) -> dict[str, Any]:
    now = utcnow()
    secret = new_secret()
    async with svc.db.write() as conn:
        row = await _visible(conn, caller, webhook_id)
        await webhook_store.update_webhook(
            conn,
            webhook_id,
            {
                "secret": secret,
                "previous_secret": row.secret,
                "secret_rotated_at": now,
                "updated_at": now,
            },
        )
        row = await _visible(conn, caller, webhook_id)
    return view(row, secret)


@router.post(
    "/{webhook_id}/test",
    status_code=202,
    summary="Send a test event to this endpoint",
    response_model=answers.WebhookTestSent,
    openapi_extra=answers.replay_links(202),
)
async def send_test(svc: Svc, caller: WebhookManager, webhook_id: str) -> dict[str, Any]:
    now = utcnow()
    event_id = new_id("evt_")
    delivery_id = new_id("whd_")
    async with svc.db.write() as conn:
        row = await _visible(conn, caller, webhook_id)
        await webhook_store.insert_event(
            conn,
            {
                "id": event_id,
                "type": TEST_EVENT,
                "email_id": None,
                "domain_id": row.domain_id,
                "sequence": 0,
                "payload": {
                    "type": TEST_EVENT,
                    "created_at": rfc3339(now),
                    "data": {"webhook_id": webhook_id, "message": "hello from Postline"},
                },
                "created_at": now,
                # Already dispatched: it goes to this endpoint only, not to the others.
                "dispatched_at": now,
            },
        )
        await webhook_store.insert_deliveries(
            conn,
            [
                webhook_store.new_delivery(
                    delivery_id=delivery_id, event_id=event_id, webhook_id=webhook_id, now=now
                )
            ],
        )
    svc.wakeups.events_written()
    return {"event_id": event_id, "delivery_id": delivery_id}


@router.get(
    "/{webhook_id}/deliveries",
    summary="Deliveries to this endpoint, newest first",
    response_model=answers.WebhookDeliveryList,
)
async def list_deliveries(
    svc: Svc,
    caller: WebhookManager,
    webhook_id: str,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    after = page_after(cursor, "whd_")
    async with svc.db.read() as conn:
        await _visible(conn, caller, webhook_id)
        rows = await webhook_store.list_deliveries(conn, webhook_id, after, limit + 1)
    return keyset_page(rows, limit, delivery_view)


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/replay",
    status_code=202,
    summary="Send one delivery again now (same webhook-id)",
    response_model=answers.WebhookDelivery,
)
async def replay(
    svc: Svc, caller: WebhookManager, webhook_id: str, delivery_id: str
) -> dict[str, Any]:
    async with svc.db.write() as conn:
        await _visible(conn, caller, webhook_id)
        delivery = await webhook_store.get_delivery(conn, delivery_id)
        if delivery is None or delivery.webhook_id != webhook_id:
            raise Problem(404, f"no delivery {delivery_id} for this webhook")
        await webhook_store.replay_delivery(conn, delivery_id, utcnow())
        delivery = await webhook_store.get_delivery(conn, delivery_id)
    svc.wakeups.events_written()
    assert delivery is not None
    return delivery_view(delivery)


async def event_deliveries(
    conn: AsyncConnection, caller: Principal, event_ids: list[str]
) -> dict[str, list[dict[str, Any]]]:
    """The deliveries of each event to the endpoints this key manages, by event id."""
    visible = {w.id for w in await webhook_store.list_webhooks(conn, caller.domain_id)}
    found: dict[str, list[dict[str, Any]]] = {}
    for row in await webhook_store.deliveries_of_events(conn, event_ids):
        if row.webhook_id in visible:
            found.setdefault(row.event_id, []).append(
                delivery_view(row) | {"webhook_id": row.webhook_id}
            )
    return found
