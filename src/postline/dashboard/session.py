"""Sessions of the dashboard: an API key signs in once, a cookie carries a random token.

The token's SHA-256 is the row's key (``store.sessions``), with the key it stands for,
the CSRF token of its forms and an expiry the server checks on every request. The
session ends at sign-out, at expiry, or when its key is revoked.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from starlette.requests import Request
from starlette.responses import Response

from postline.keys import Principal, principal_of
from postline.store import keys as key_store
from postline.store import sessions as session_store
from postline.store.db import Database
from postline.store.types import utcnow

COOKIE = "postline_session"
#: The sign-in form's own CSRF cookie, before there is a session (login CSRF).
SIGNIN_COOKIE = "postline_signin"
#: A session lasts this long from sign-in, whatever the browser keeps.
LIFETIME = timedelta(hours=8)


@dataclass(frozen=True)
class SignedIn:
    caller: Principal
    csrf: str
    token_hash: str


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


async def start(db: Database, caller: Principal) -> str:
    """A new session for ``caller``; the token for its cookie. Expired rows go now."""
    token = new_token()
    now = utcnow()
    async with db.write() as conn:
        await session_store.delete_expired(conn, now)
        await session_store.insert_session(
            conn,
            token_hash=_hash(token),
            key_id=caller.key_id,
            csrf_token=new_token(),
            now=now,
            expires_at=now + LIFETIME,
        )
    return token


async def current(db: Database, request: Request) -> SignedIn | None:
    """The live session of this request's cookie, with its key still active, or None."""
    token = request.cookies.get(COOKIE)
    if not token or len(token) > 200:
        return None
    token_hash = _hash(token)
    async with db.read() as conn:
        row = await session_store.live_session(conn, token_hash, utcnow())
        key = await key_store.get_active_key(conn, row.key_id) if row is not None else None
    if row is None or key is None:
        return None
    return SignedIn(principal_of(key), row.csrf_token, token_hash)


async def end(db: Database, signed_in: SignedIn) -> None:
    async with db.write() as conn:
        await session_store.delete_session(conn, signed_in.token_hash)


def set_cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    """HttpOnly, SameSite=Strict, and Secure when the browser came over TLS (directly or,
    with ``--proxy-headers``, through a proxy that says so)."""
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        httponly=True,
        secure=request.url.scheme == "https",
        samesite="strict",
    )


def csrf_ok(expected: str, presented: str | None) -> bool:
    """Compared as bytes: ``compare_digest`` raises on a str with non-ASCII characters,
    which a forged form may send, instead of saying no."""
    return bool(presented) and secrets.compare_digest(expected.encode(), (presented or "").encode())
