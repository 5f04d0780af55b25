"""Bearer-key authentication and domain scoping; each authenticated request takes a
rate-limit token for its key (``api.ratelimit``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from postline.api import ratelimit
from postline.api.problems import Problem
from postline.app import Services
from postline.keys import Principal, authenticate

#: RFC 6750: a 401 names the scheme the client should use, and why a key was refused.
_NO_KEY = {"WWW-Authenticate": 'Bearer realm="postline"'}
_BAD_KEY = {"WWW-Authenticate": 'Bearer realm="postline", error="invalid_token"'}


def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found


async def principal(request: Request) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Problem(401, "missing API key: send 'Authorization: Bearer <key>'", headers=_NO_KEY)
    found = await authenticate(services(request).db, token.strip())
    if found is None:
        raise Problem(401, "invalid or revoked API key", headers=_BAD_KEY)
    await ratelimit.enforce(request, found)
    return found


async def admin(caller: Annotated[Principal, Depends(principal)]) -> Principal:
    if not caller.is_admin:
        raise Problem(403, "this operation needs an unscoped (admin) API key")
    return caller


Caller = Annotated[Principal, Depends(principal)]
Admin = Annotated[Principal, Depends(admin)]
Svc = Annotated[Services, Depends(services)]
