"""The FastAPI application factory."""

from __future__ import annotations

from fastapi import FastAPI

from postline import __version__
from postline.api import (
    admin,
    body_guard,
    client_address,
    destinations,
    docs,
    emails,
    events,
    health,
    inbound,
    inbound_messages,
    inbound_routes,
    index,
    problems,
    ratelimit,
    raw_emails,
    recipients,
    responses,
    stats,
    suppressions,
    templates,
    tracking,
    webhooks,
)
from postline.app import Services
from postline.dashboard import app as dashboard
from postline.ratelimit import RateLimiter


def create_api(services: Services) -> FastAPI:
    app = FastAPI(
        title="Postline",
        version=__version__,
        description="Self-hosted transactional email: send, track, get told.",
        # Served by api.docs with assets of its own, not FastAPI's pages, which use a CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.state.services = services
    app.state.rate_limiter = RateLimiter.from_settings(
        services.settings, services.queue, services.metrics
    )
    app.add_middleware(ratelimit.RateLimitHeaders)
    problems.install(app)
    responses.document_problems(app)
    # Nothing reads a body before it has counted it.
    app.add_middleware(
        body_guard.BodyGuard,
        authenticator=services.authenticator,
        limit=services.settings.request_limit,
    )
    # Outside it: its problems too are relabelled for clients that want plain JSON.
    app.add_middleware(problems.NegotiatedProblems)
    # Outermost: every layer inside sees the client a trusted proxy names.
    client_address.install(app, services.settings)

    for router in (
        emails.router,
        raw_emails.router,
        admin.router,
        suppressions.router,
        recipients.router,
        webhooks.router,
        destinations.router,
        health.router,
        inbound.router,  # /v1/inbound/reports before /v1/inbound/{inbound_id}
        inbound_messages.router,
        inbound_routes.router,
        events.router,
        templates.router,
        stats.router,
        tracking.router,
        index.router,
    ):
        app.include_router(responses.declare_problems(router))
    docs.install(app)
    dashboard.install(app)
    return app
