"""Who is asking: the peer, or the client a trusted reverse proxy names.

Behind a reverse proxy every request comes from the proxy's address, so the Apple
Mail Privacy Protection check of the open pixel (``postline.tracking.record``) and
the address an event records would see only the proxy. A proxy says who its client
was in ``X-Forwarded-For`` (and the scheme in ``X-Forwarded-Proto``), but anybody can
send those headers: they are believed only from a peer in ``POSTLINE_TRUSTED_PROXIES``,
and then the client is the last address of the chain that is no trusted proxy.

Uvicorn's own handling is turned off in ``postline.api.server`` (it trusts loopback
peers by default, and ``FORWARDED_ALLOW_IPS`` from the environment); this one runs in
the application, so the in-process app of the tests behaves as ``postline serve``.
"""

from __future__ import annotations

from fastapi import FastAPI
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from postline.config import Settings


def install(app: FastAPI, settings: Settings) -> None:
    """Outermost, so that everything inside (rate limits, the dashboard's sign-in, the
    tracking endpoints) sees the same client. Nothing when no proxy is trusted."""
    networks = settings.trusted_proxy_networks
    if networks:
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=networks)
