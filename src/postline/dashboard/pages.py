"""Sign-in, sign-out and the pages an operator reads: the send log, an email's detail
and the recipient lookup. Each calls the API's route function as the signed-in key."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from starlette.responses import Response

from postline.api import emails as emails_api
from postline.api import recipients as recipients_api
from postline.api import webhooks as webhooks_api
from postline.api.auth import services
from postline.api.problems import Problem
from postline.dashboard import session, web
from postline.dashboard.content import shown
from postline.dashboard.guard import Form, Me, PageRoute, require
from postline.dashboard.overview import WINDOWS, overview, window
from postline.model import PENDING_STATUSES, EmailStatus, RecipientStatus

router = APIRouter(route_class=PageRoute, include_in_schema=False)

#: The send log's filters, as ``GET /v1/emails`` names them.
FILTERS = (
    "status",
    "recipient_status",
    "recipient",
    "from",
    "domain",
    "tag",
    "since",
    "until",
    "message_id",
)

E = TypeVar("E", bound=StrEnum)


def _invalid(field: str, message: str) -> Problem:
    return Problem(422, f"{field}: {message}", [{"field": field, "message": message}])


def _choice(kind: type[E], field: str, value: str | None) -> E | None:
    if not value:
        return None
    try:
        return kind(value)
    except ValueError:
        raise _invalid(field, f"must be one of {', '.join(kind)}") from None


def _moment(field: str, value: str | None) -> datetime | None:
    """A ``datetime-local`` field (no zone: read as UTC) or an RFC 3339 time."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise _invalid(field, "must be a date and time, e.g. 2026-12-06T07:00") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _text(value: str | None) -> str | None:
    return value.strip() or None if value else None


# -- sign-in --------------------------------------------------------------------------------


def _signin_page(request: Request, status: int = 200, error: str | None = None) -> Response:
    token = session.new_token()
    response = web.render(request, "signin.html", status=status, signin_csrf=token, error=error)
    session.set_cookie(request, response, session.SIGNIN_COOKIE, token, max_age=3600)
    return response


@router.get("/")
async def home(request: Request) -> Response:
    me = await session.current(services(request).db, request)
    if me is None:
        return _signin_page(request)
    return await overview(request, me)


@router.get("/overview/{name}")
async def overview_window(request: Request, me: Me, name: str) -> Response:
    """One window of the overview (``day`` or ``week``), which the page loads."""
    if name not in WINDOWS:
        raise Problem(404, f"no overview window {name}")
    return await window(request, me, name)


@router.post("/signin")
async def sign_in(request: Request) -> Response:
    """An API key signs in. Every attempt takes a token from the rate-limit bucket of the
    client's address, so failed guesses run into the same 429 as an API client."""
    svc = services(request)
    fields = await web.form(request)
    if not session.csrf_ok(request.cookies.get(session.SIGNIN_COOKIE, ""), fields.get("csrf")):
        return _signin_page(request, 403, "The sign-in form expired; try again.")
    limiter = request.app.state.rate_limiter
    client = request.client.host if request.client else "unknown"
    decision = await limiter.check(f"signin:{client}")
    if decision is not None and not decision.allowed:
        response = _signin_page(
            request, 429, f"Too many sign-in attempts; try again in {decision.retry_after} s."
        )
        response.headers["Retry-After"] = str(decision.retry_after)
        return response
    key = fields.get("key", "").strip()
    caller = await svc.authenticator.authenticate(key) if key and len(key) <= 200 else None
    if caller is None:
        return _signin_page(request, 401, "That API key is not valid, or it was revoked.")
    token = await session.start(svc.db, caller)
    response = web.redirect(request, "/")
    session.set_cookie(
        request, response, session.COOKIE, token, int(session.LIFETIME.total_seconds())
    )
    response.delete_cookie(session.SIGNIN_COOKIE, path="/")
    return response


@router.post("/signout")
async def sign_out(request: Request, me: Me, _: Form) -> Response:
    await session.end(services(request).db, me)
    response = web.redirect(request, "/")
    response.delete_cookie(session.COOKIE, path="/")
    return response


# -- the send log ---------------------------------------------------------------------------


async def _send_log(request: Request, me: Me) -> dict[str, Any]:
    require(me, "read")
    q = request.query_params
    limit = q.get("limit", "50")
    if not limit.isdigit() or not 1 <= int(limit) <= 500:
        raise _invalid("limit", "must be 1 to 500")
    tag = _text(q.get("tag"))
    if tag is not None and ":" not in tag:
        raise _invalid("tag", "must be key:value")
    answer = await emails_api.list_emails(
        services(request),
        me.caller,
        status=_choice(EmailStatus, "status", q.get("status")),
        recipient_status=_choice(RecipientStatus, "recipient_status", q.get("recipient_status")),
        recipient=_text(q.get("recipient")),
        from_=_text(q.get("from")),
        domain=_text(q.get("domain")),
        tag=tag,
        since=_moment("since", q.get("since")),
        until=_moment("until", q.get("until")),
        message_id=_text(q.get("message_id")),
        limit=int(limit),
        cursor=_text(q.get("cursor")),
    )
    chosen = {name: q[name] for name in FILTERS if q.get(name)}
    here = urlencode({**chosen, **({"cursor": q["cursor"]} if q.get("cursor") else {})})
    following = answer["next_cursor"]
    return {
        "emails": answer["data"],
        "filters": chosen,
        "query": here,
        "next": urlencode({**chosen, "cursor": following}) if following else None,
        "first_page": not q.get("cursor"),
        "email_statuses": list(EmailStatus),
        "recipient_statuses": list(RecipientStatus),
    }


@router.get("/emails")
async def send_log(request: Request, me: Me) -> Response:
    return web.render(request, "emails.html", me, page="emails", **await _send_log(request, me))


@router.get("/emails/rows")
async def send_log_rows(request: Request, me: Me) -> Response:
    """The rows alone, which the page polls for: statuses change without a reload."""
    return web.render(request, "_email_rows.html", me, **await _send_log(request, me))


@router.get("/emails/{email_id}")
async def email_detail(request: Request, me: Me, email_id: str) -> Response:
    require(me, "read")
    svc = services(request)
    detail = await emails_api.get_email(svc, me.caller, email_id)
    async with svc.db.read() as conn:
        deliveries = await webhooks_api.event_deliveries(
            conn, me.caller, [e["id"] for e in detail["events"]]
        )
    try:
        raw = await emails_api.get_email_content(svc, me.caller, email_id)
        content = shown(bytes(raw.body))
    except Problem as exc:
        if exc.status != 410:
            raise
        content = None
    waiting = any(r["status"] in PENDING_STATUSES for r in detail["recipients"])
    return web.render(
        request,
        "email.html",
        me,
        page="emails",
        email=detail,
        deliveries=deliveries,
        content=content,
        live=waiting,
    )


# -- "why didn't they get it?" --------------------------------------------------------------


@router.get("/recipients")
async def recipient_lookup(request: Request, me: Me) -> Response:
    require(me, "read")
    address = _text(request.query_params.get("address"))
    found = None
    if address is not None:
        found = await recipients_api.lookup_recipient(services(request), me.caller, address)
    return web.render(
        request, "recipient.html", me, page="recipients", address=address or "", found=found
    )
