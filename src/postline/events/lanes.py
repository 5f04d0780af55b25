"""The webhook client's transport: a few small connection pools instead of one large one.

httpcore's pool looks at every connection it holds each time a request starts and
each time one ends, and for every idle one it counts all the others again and asks
the socket whether the server closed it (a ``poll``): with the 32 senders of the
default ``POSTLINE_WEBHOOK_CONCURRENCY`` on one endpoint that bookkeeping cost more
CPU than the request (measured: 2.4 ms per POST on loopback, against 0.7 ms with the
same senders over lanes of four). It also closed a connection whenever the pool
held more than its keep-alive limit (20 by default), whether that one was idle or
not, so a busy endpoint saw its connections closed and opened again all the time.

So the one long-lived client of the dispatcher sends over lanes: each sender keeps
to one lane (``LANE`` in the request's extensions), each lane is an
``httpx.AsyncHTTPTransport`` with its own small keep-alive pool, and a lane holds no
more connections than its senders can use at once, plus room for a second endpoint.

Each lane's pool reaches the network through ``events.network.AsyncioBackend``
rather than httpcore's anyio default (measured: 2.29 -> 1.90 ms of CPU per event,
medians of three pairs of ``bench/webhooks.py --events 5000 --concurrency 32``).
"""

from __future__ import annotations

import ssl

import httpcore
import httpx

from postline.events.network import AsyncioBackend

#: The request extension that names the sender's lane (an int).
LANE = "postline_lane"
#: Senders that share one lane (and its pool).
SENDERS_PER_LANE = 4


def lane_count(senders: int) -> int:
    return max(1, -(-senders // SENDERS_PER_LANE))


class Lane(httpx.AsyncHTTPTransport):
    """httpx's transport over an httpcore pool with the given network backend.

    httpx takes no network backend, so the pool it builds is replaced by one with the
    same settings that has it; httpx's own request and response handling and its
    mapping of httpcore's errors stay as they are.
    """

    def __init__(
        self, tls: ssl.SSLContext, limits: httpx.Limits, network: httpcore.AsyncNetworkBackend
    ) -> None:
        super().__init__(verify=tls, limits=limits)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=tls,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=network,
        )


class LaneTransport(httpx.AsyncBaseTransport):
    """Sends each request over the pool of its lane; one lane for a request without one."""

    def __init__(self, senders: int, network: httpcore.AsyncNetworkBackend | None = None) -> None:
        """``network``: how the lanes connect (None: ``AsyncioBackend``)."""
        # Up to two endpoints' worth of keep-alive connections per lane: a lane whose
        # senders alternate between two endpoints keeps both connections open.
        limits = httpx.Limits(
            max_connections=2 * SENDERS_PER_LANE, max_keepalive_connections=2 * SENDERS_PER_LANE
        )
        # One TLS context (loading the CA bundle is the costly part) for every lane.
        tls = httpx.create_ssl_context()
        network = network or AsyncioBackend()
        self.lanes = [Lane(tls, limits, network) for _ in range(lane_count(senders))]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        lane: int = request.extensions.get(LANE, 0)
        return await self.lanes[lane % len(self.lanes)].handle_async_request(request)

    async def aclose(self) -> None:
        for lane in self.lanes:
            await lane.aclose()
