"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response

from postline import __version__
from postline.api import (
    admin,
    destinations,
    emails,
    health,
    problems,
    ratelimit,
    responses,
    suppressions,
    webhooks,
)
from postline.app import Services
from postline.ratelimit import RateLimiter


def create_api(services: Services) -> FastAPI:
    app = FastAPI(
        title="Postline",
        version=__version__,
        description="Self-hosted transactional email: send, track, get told.",
    )
    app.state.services = services
    app.state.rate_limiter = RateLimiter.from_settings(
        services.settings, services.queue, services.metrics
    )
    app.add_middleware(ratelimit.RateLimitHeaders)
    problems.install(app)
    responses.document_problems(app)
    limit = int(services.settings.max_message_bytes * 1.4) + 1024 * 1024

    @app.middleware("http")
    async def _size_limit(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return problems.problem_response(413, f"the request body is larger than {limit} bytes")
        return await call_next(request)

    app.include_router(emails.router)
    app.include_router(admin.router)
    app.include_router(suppressions.router)
    app.include_router(webhooks.router)
    app.include_router(destinations.router)
    app.include_router(health.router)
    return app
