"""The per-key rate limit at the HTTP door (``postline.ratelimit``).

Every authenticated request takes a token once its key is known; without one
it is answered 429 with ``Retry-After``. An email send takes the rest of its
tokens, one per recipient, once its body is counted (:func:`charge_recipients`).
``/healthz``, ``/readyz`` and ``/metrics`` take none. Every authenticated answer,
success or problem, carries ``ratelimit-limit`` (the burst), ``ratelimit-remaining``
and ``ratelimit-reset`` (seconds until the bucket is full again), as docs/API.md
promises: the dependency leaves its decision in the request's state and
``RateLimitHeaders`` writes it on whatever answer goes out.
"""

from __future__ import annotations

from fastapi import Request
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from postline.api.problems import Problem
from postline.keys import Principal
from postline.ratelimit import Decision, RateLimiter

#: Where the decision waits in the request's state for ``RateLimitHeaders``.
_STATE_KEY = "rate_limit"


def headers(decision: Decision) -> dict[str, str]:
    return {
        "ratelimit-limit": str(decision.limit),
        "ratelimit-remaining": str(decision.remaining),
        "ratelimit-reset": str(decision.reset),
    }


def _limiter(request: Request) -> RateLimiter | None:
    limiter: RateLimiter | None = getattr(request.app.state, "rate_limiter", None)
    return limiter if limiter is not None and limiter.enabled else None


async def charge_recipients(request: Request, caller: Principal, recipients: int) -> None:
    """An email send costs a token per recipient, its request's own (taken at
    authentication) included. More than the burst could never be granted, so that is
    the 422 problem at once, not a 429 to wait on."""
    limiter = _limiter(request)
    if limiter is None:
        return
    if recipients > limiter.burst:
        raise Problem(
            422,
            f"this request needs {recipients} rate-limit tokens (one per recipient) and this "
            f"key's bucket holds at most {limiter.burst} (POSTLINE_RATE_LIMIT_BURST); "
            "send the recipients in smaller requests",
        )
    if recipients > 1:
        await enforce(request, caller, count=recipients - 1)


async def enforce(request: Request, caller: Principal, count: int = 1) -> None:
    """Take ``count`` tokens (at most the burst) for the caller's key; raise the 429
    problem when there are too few."""
    limiter = _limiter(request)
    if limiter is None:
        return
    decision = await limiter.check(caller.key_id, count=count)
    if decision is None:
        return
    setattr(request.state, _STATE_KEY, decision)
    if not decision.allowed:
        wait = decision.retry_after
        raise Problem(
            429,
            f"rate limit exceeded for this API key ({limiter.describe()}); retry in {wait} s",
            headers={"Retry-After": str(wait), **headers(decision)},
        )


class RateLimitHeaders:
    """Pure ASGI middleware: the rate limit headers on every authenticated answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # The dict the endpoint's Request.state writes into, shared from here on.
        state = scope.setdefault("state", {})

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                decision = state.get(_STATE_KEY)
                if decision is not None:
                    out = MutableHeaders(scope=message)
                    for name, value in headers(decision).items():
                        out[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)
