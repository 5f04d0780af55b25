"""The webhook client's transport: each sender over connections of its own.

httpcore's pool looks at every connection it holds each time a request starts and
each time one ends, and for every idle one it counts all the others again and asks
the socket whether the server closed it (a ``poll``): with the 32 senders of the
default ``POSTLINE_WEBHOOK_CONCURRENCY`` on one endpoint that bookkeeping cost more
CPU than the request (measured: 2.4 ms per POST on loopback, against 0.7 ms with the
same senders over lanes of four). It also closed a connection whenever the pool
held more than its keep-alive limit (20 by default), whether that one was idle or
not, so a busy endpoint saw its connections closed and opened again all the time.
Even a pool of four senders took and gave back anyio locks, events and cancel scopes
around every request: without the pool, 12-17% less CPU per event (stop 37, three
pairs of ``bench/webhooks.py --events 5000 --concurrency 32``).

So the one long-lived client of the dispatcher sends over lanes, one per sender
(``LANE`` in the request's extensions). A lane is an ``httpx.AsyncHTTPTransport``
whose pool is replaced by the sender's own keep-alive connections
(:class:`SenderConnections`): one per endpoint, with nothing to share and so nothing
to lock. A request without a lane goes through an ordinary pool.

The connections reach the network through ``events.network.AsyncioBackend``
rather than httpcore's anyio default (measured: 2.29 -> 1.90 ms of CPU per event,
medians of three pairs of ``bench/webhooks.py --events 5000 --concurrency 32``).
"""

from __future__ import annotations

import ssl
from collections import OrderedDict

import httpcore
import httpx

from postline.events.network import AsyncioBackend

#: The request extension that names the sender's lane (an int).
LANE = "postline_lane"
#: Endpoints a sender keeps a connection open to, the most recently used.
ENDPOINTS_PER_SENDER = 4


#: What a connection is kept for: scheme, host, port and TLS name.
_Endpoint = tuple[bytes, bytes, int, str | None]


class SenderConnections:
    """One sender's keep-alive connections: one per endpoint, the most recently used kept.

    In the place of httpcore's pool (``Lane``), which takes and gives back anyio locks,
    events and cancel scopes around every request to share its connections between
    callers. A lane is one sender's, and a sender sends one request at a time (and
    reads its answer before the next), so a connection here is never wanted by two
    requests at once: nothing to lock.

    A connection is known by its address and its TLS name together (``sni_hostname``):
    one opened for one endpoint's name never carries another's requests.
    """

    def __init__(
        self,
        tls: ssl.SSLContext,
        network: httpcore.AsyncNetworkBackend,
        *,
        keepalive_expiry: float | None,
        most: int,
    ) -> None:
        self._tls = tls
        self._network = network
        self._keepalive_expiry = keepalive_expiry
        self._most = most
        #: Idle or in use, least recently used first.
        self._open: OrderedDict[_Endpoint, httpcore.AsyncHTTPConnection] = OrderedDict()

    @property
    def connections(self) -> list[httpcore.AsyncHTTPConnection]:
        return list(self._open.values())

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        origin = request.url.origin
        key = (origin.scheme, origin.host, origin.port, request.extensions.get("sni_hostname"))
        connection = self._open.pop(key, None)
        if connection is not None and (connection.has_expired() or not connection.is_available()):
            await connection.aclose()  # closed by the endpoint, or idle past its keep-alive
            connection = None
        if connection is None:
            connection = httpcore.AsyncHTTPConnection(
                origin=origin,
                ssl_context=self._tls,
                keepalive_expiry=self._keepalive_expiry,
                network_backend=self._network,
            )
        try:
            response = await connection.handle_async_request(request)
        except BaseException:
            await connection.aclose()
            raise
        self._open[key] = connection
        while len(self._open) > self._most:
            _, oldest = self._open.popitem(last=False)
            await oldest.aclose()
        return response

    async def aclose(self) -> None:
        while self._open:
            _, connection = self._open.popitem()
            await connection.aclose()

    async def __aenter__(self) -> SenderConnections:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()


class Lane(httpx.AsyncHTTPTransport):
    """httpx's transport over one sender's own connections (:class:`SenderConnections`).

    httpx takes no network backend, and no other pool, so the pool it builds is
    replaced; httpx's own request and response handling and its mapping of httpcore's
    errors stay as they are.
    """

    def __init__(
        self, tls: ssl.SSLContext, limits: httpx.Limits, network: httpcore.AsyncNetworkBackend
    ) -> None:
        super().__init__(verify=tls, limits=limits)
        self._pool = SenderConnections(  # type: ignore[assignment]
            tls,
            network,
            keepalive_expiry=limits.keepalive_expiry,  # None: kept until the endpoint closes it
            most=limits.max_keepalive_connections or ENDPOINTS_PER_SENDER,
        )


class LaneTransport(httpx.AsyncBaseTransport):
    """Sends each request over its sender's lane (``LANE``: 0 to ``senders - 1``, each
    one sender's alone), and a request without one over a pool shared by all."""

    def __init__(self, senders: int, network: httpcore.AsyncNetworkBackend | None = None) -> None:
        """``network``: how the lanes connect (None: ``AsyncioBackend``)."""
        limits = httpx.Limits(max_keepalive_connections=ENDPOINTS_PER_SENDER)
        # One TLS context (loading the CA bundle is the costly part) for every lane.
        tls = httpx.create_ssl_context()
        network = network or AsyncioBackend()
        self.lanes = [Lane(tls, limits, network) for _ in range(senders)]
        self.shared = httpx.AsyncHTTPTransport(verify=tls)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        lane: int | None = request.extensions.get(LANE)
        if lane is None:
            return await self.shared.handle_async_request(request)
        return await self.lanes[lane].handle_async_request(request)

    async def aclose(self) -> None:
        for lane in self.lanes:
            await lane.aclose()
        await self.shared.aclose()
