"""Bearer-key authentication and domain scoping; each authenticated request takes a
rate-limit token for its key (``api.ratelimit``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPBearer
from sqlalchemy.ext.asyncio import AsyncConnection

from postline.api import ratelimit
from postline.api.problems import Problem
from postline.app import Services
from postline.keys import Authenticator, Principal
from postline.store import domains as domain_store

#: RFC 6750: a 401 names the scheme the client should use, and why a key was refused.
_NO_KEY = {"WWW-Authenticate": 'Bearer realm="postline"'}
_BAD_KEY = {"WWW-Authenticate": 'Bearer realm="postline", error="invalid_token"'}


def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found


async def _services_dependency(request: Request) -> Services:
    """``services`` for ``Depends``: FastAPI runs a plain function dependency in its
    thread pool, a hand-off per request that was 6.6% of the API process's samples at
    200 single sends a second (``py-spy record --gil``); a coroutine runs in place."""
    return services(request)


#: Where ``api.body_guard`` leaves the principal it found before reading a body.
SCOPE_KEY = "postline.principal"


async def identify(authenticator: Authenticator, header: str) -> Principal:
    """The principal of an ``Authorization`` header, or a 401 Problem."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Problem(401, "missing API key: send 'Authorization: Bearer <key>'", headers=_NO_KEY)
    found = await authenticator.authenticate(token.strip())
    if found is None:
        raise Problem(401, "invalid or revoked API key", headers=_BAD_KEY, name="invalid_api_key")
    return found


#: The scheme the OpenAPI document declares on every operation that needs a key (the
#: Authorize button of ``/docs``; ``api.responses`` writes it in). Not a dependency:
#: ``identify`` reads the header itself, as the body guard does before a route runs, and
#: a security dependency made FastAPI work out OAuth scopes for every dependency of every
#: request (with the scheme's own call, 5.8% of the API process's samples at 32
#: concurrent single sends; 3.2% without).
bearer = HTTPBearer(
    scheme_name="apiKey",
    bearerFormat="pl_...",
    description="An API key: `Authorization: Bearer pl_...`. A key scoped to a domain sees"
    " and sends for that domain only; an unscoped (admin) key for all of them.",
    auto_error=False,
)


async def principal(request: Request) -> Principal:
    # A request with a body was authenticated before it was read (api.body_guard).
    found = request.scope.get(SCOPE_KEY)
    if not isinstance(found, Principal):
        found = await identify(
            services(request).authenticator, request.headers.get("authorization", "")
        )
    await ratelimit.enforce(request, found)
    return found


def needs(scope: str) -> Callable[[Principal], Awaitable[Principal]]:
    """The dependency of a route that needs ``scope`` (``keys.SCOPES``): the caller, or
    a 403 naming the scope its key lacks."""

    async def with_scope(caller: Annotated[Principal, Depends(principal)]) -> Principal:
        if scope not in caller.scopes:
            raise Problem(
                403,
                f"this API key lacks the '{scope}' scope this operation needs",
                name="restricted_api_key",
            )
        return caller

    with_scope.__name__ = f"needs_{scope}"
    return with_scope


async def admin(caller: Annotated[Principal, Depends(needs("admin"))]) -> Principal:
    if not caller.is_admin:
        raise Problem(
            403, "this operation needs an unscoped (admin) API key", name="restricted_api_key"
        )
    return caller


async def domain_in_scope(conn: AsyncConnection, caller: Principal, name: str) -> str:
    """The id of the sending domain a request names. A scoped key gets the same 403 for
    every domain but its own, whether it exists or not (a 422 for unknown names told it
    which other domains exist); an unscoped key gets 422 for an unknown one."""
    wanted = name.strip().lower()
    problem = Problem(
        422 if caller.is_admin else 403,
        f"unknown or forbidden domain {name}",
        [{"field": "domain", "message": "not a sending domain this key may use"}],
    )
    if not caller.is_admin and wanted != caller.domain_name:
        raise problem
    row = await domain_store.get_domain_by_name(conn, wanted)
    if row is None or not caller.may_see(row.id):
        raise problem
    return row.id


#: The caller of a send: a key with the ``send`` scope (``Sender``; the send routes'
#: handler calls it as FastAPI would, ``api.emails._SendRoute``).
sender = needs("send")

#: Any valid key, whatever its scopes: for what every key may do.
Caller = Annotated[Principal, Depends(principal)]
#: An unscoped key with the ``admin`` scope.
Admin = Annotated[Principal, Depends(admin)]
#: A key with the named scope, scoped to a domain or not.
Sender = Annotated[Principal, Depends(sender)]
Reader = Annotated[Principal, Depends(needs("read"))]
TemplateEditor = Annotated[Principal, Depends(needs("templates"))]
WebhookManager = Annotated[Principal, Depends(needs("webhooks"))]
SuppressionManager = Annotated[Principal, Depends(needs("suppressions"))]
Operator = Annotated[Principal, Depends(needs("admin"))]
Statistician = Annotated[Principal, Depends(needs("stats"))]
Svc = Annotated[Services, Depends(_services_dependency)]
