"""Who may see a page: the signed-in session, its CSRF token, and the problems of the
API's route functions turned into pages instead of JSON."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import Depends, Request
from fastapi.routing import APIRoute
from starlette.responses import Response

from postline.api import ratelimit
from postline.api.auth import services
from postline.api.problems import Problem
from postline.dashboard import session, web
from postline.dashboard.session import SignedIn


class SignInFirst(Exception):
    """No live session: the answer is the sign-in page."""


class BadCsrf(Exception):
    """A form without this session's CSRF token."""


async def signed_in(request: Request) -> SignedIn:
    """The session of this request, which takes a rate-limit token of its key, as every
    API request does."""
    me = await session.current(services(request).db, request)
    if me is None:
        raise SignInFirst
    await ratelimit.enforce(request, me.caller)
    return me


async def posted(request: Request, me: Annotated[SignedIn, Depends(signed_in)]) -> dict[str, str]:
    """A form of this session: its fields, once its CSRF token checked out."""
    fields = await web.form(request)
    presented = fields.get("csrf") or request.headers.get("x-csrf-token")
    if not session.csrf_ok(me.csrf, presented):
        raise BadCsrf
    return fields


def require(me: SignedIn, scope: str) -> None:
    """The scope the API route a page calls needs (``api.auth.needs``): the page calls
    the route's function directly, so it checks here what the dependency checks there."""
    if scope not in me.caller.scopes:
        raise Problem(403, f"this API key lacks the '{scope}' scope this page needs")


Me = Annotated[SignedIn, Depends(signed_in)]
Form = Annotated[dict[str, str], Depends(posted)]


def back(request: Request) -> str:
    """Where a form came from (same-origin Referer), to go back to after it."""
    referer = urlsplit(request.headers.get("referer", ""))
    if referer.netloc and referer.netloc != request.url.netloc:
        return "/"
    path = (
        referer.path if referer.path.startswith("/") and not referer.path.startswith("//") else "/"
    )
    return path + (f"?{referer.query}" if referer.query else "")


class PageRoute(APIRoute):
    """A dashboard route: sign-in, CSRF and API problems answered as pages."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def page(request: Request) -> Response:
            try:
                return await handler(request)
            except SignInFirst:
                if request.headers.get("hx-request"):
                    return Response(status_code=204, headers={"HX-Redirect": "/"})
                return web.redirect(request, "/")
            except BadCsrf:
                text = "The form expired or did not come from this dashboard; try again."
                return web.render(request, "error.html", status=403, title="Forbidden", text=text)
            except Problem as exc:
                if request.method == "POST":
                    return web.redirect(request, back(request), ("error", exc.detail))
                headers = {k: v for k, v in (exc.headers or {}).items() if k == "Retry-After"}
                response = web.render(
                    request, "error.html", status=exc.status, title=str(exc.status), text=exc.detail
                )
                response.headers.update(headers)
                return response

        return page
