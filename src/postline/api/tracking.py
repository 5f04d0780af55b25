"""The public tracking endpoints: the open pixel, tracked links, one-click unsubscribe.

They need no API key: the token in the path is the authority, signed by Postline
(``postline.tracking.tokens``). A token that does not check is a 404 problem, so a
link can only ever redirect to the URL it was made for (never an open redirect).
They answer on any ``Host``: a domain's own tracking host (``postline.tracking.hosts``)
is a CNAME to the same server.
"""

from __future__ import annotations

import base64
import html
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from postline.api import answers
from postline.api.auth import Svc
from postline.api.problems import Problem
from postline.api.responses import problem_responses
from postline.domains import DomainError, normalize_domain
from postline.store import domains as domain_store
from postline.store.types import utcnow
from postline.tracking.record import record
from postline.tracking.tokens import Kind, Token

router = APIRouter(prefix="/t", tags=["tracking"], responses=problem_responses(404))

#: The smallest transparent 1x1 GIF.
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
#: A fetch is an event each time: no cache (ours, a proxy's or the reader's) may answer it.
NO_CACHE = {"Cache-Control": "no-store, no-cache, must-revalidate, max-age=0", "Pragma": "no-cache"}


def _checked(svc: Svc, token: str, kind: Kind) -> Token:
    checked = svc.acceptor.tracking_tokens.check(token, kind)
    if checked is None:
        raise Problem(404, "no such link")
    return checked


async def _record(svc: Svc, request: Request, token: Token) -> None:
    await record(
        svc.db,
        svc.acceptor.wakeups,
        token,
        user_agent=request.headers.get("user-agent", "")[:1000],
        ip=request.client.host if request.client else "",
        now=utcnow(),
    )


@router.get(
    "/tls",
    summary="For a proxy's on-demand TLS: 200 when `domain` is a domain's tracking host",
    response_model=answers.TrackingHost,
)
async def tls_ask(
    svc: Svc, domain: Annotated[str, Query(min_length=1, max_length=253)]
) -> dict[str, str]:
    """Caddy's ``on_demand_tls`` ``ask`` (docs/OPERATIONS.md): a proxy obtains a
    certificate for a tracking host the first time a reader's mail program asks for it,
    and only for a host this answers 200 for, so nobody makes it request certificates
    for names of their choosing."""
    try:
        name = normalize_domain(domain)
    except DomainError:
        raise Problem(404, "not a tracking host") from None
    async with svc.db.read() as conn:
        if await domain_store.domain_with_tracking_host(conn, name) is None:
            raise Problem(404, "not a tracking host")
    return {"host": name}


@router.get(
    "/o/{token}",
    summary="The open pixel: a 1x1 GIF; records email.opened",
    response_class=Response,
    responses={200: {"content": {"image/gif": {"schema": {"type": "string", "format": "binary"}}}}},
)
async def open_pixel(svc: Svc, request: Request, token: str) -> Response:
    await _record(svc, request, _checked(svc, token, "o"))
    return Response(PIXEL, media_type="image/gif", headers=NO_CACHE)


@router.get(
    "/c/{token}",
    summary="A tracked link: 302 to its URL; records email.clicked",
    status_code=302,
    response_class=RedirectResponse,
)
async def click(svc: Svc, request: Request, token: str) -> RedirectResponse:
    checked = _checked(svc, token, "c")
    await _record(svc, request, checked)
    return RedirectResponse(checked.url, status_code=302, headers=NO_CACHE)


def _page(body: str) -> HTMLResponse:
    document = (
        '<!doctype html><html><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width">'
        f"<title>Unsubscribe</title></head><body>{body}</body></html>"
    )
    return HTMLResponse(document, headers=NO_CACHE)


@router.get(
    "/u/{token}",
    summary="The unsubscribe page: a button that POSTs to the same URL",
    response_class=HTMLResponse,
)
async def unsubscribe_page(svc: Svc, token: str) -> HTMLResponse:
    checked = _checked(svc, token, "u")
    who = html.escape(checked.recipient or "this address")
    return _page(
        f"<p>Stop mail like this to {who}?</p>"
        '<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">'
        '<button type="submit">Unsubscribe</button></form>'
    )


@router.post(
    "/u/{token}",
    summary="One-click unsubscribe (RFC 8058): suppresses the recipient; records"
    " email.unsubscribed",
    response_class=HTMLResponse,
)
async def unsubscribe(svc: Svc, request: Request, token: str) -> HTMLResponse:
    checked = _checked(svc, token, "u")
    await _record(svc, request, checked)
    return _page("<p>You are unsubscribed.</p>")
