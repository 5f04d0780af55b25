"""HTTPS to a host named by a destination's DNS, connected to addresses we checked.

Used for MTA-STS policy fetches and TLS report POSTs: the name is resolved by
Postline's own resolver, its addresses go through the address policy (no
private addresses unless the operator allows them), the connection goes to such
an address while SNI and the certificate check use the name. No redirects, a
bounded answer, a bounded time.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

from postline.netpolicy import is_public

Resolve = Callable[[str], Awaitable[list[str]]]


class HttpsError(Exception):
    """The request failed or was refused: one line saying why."""


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    body: bytes


class PinnedHttps:
    def __init__(
        self,
        resolve: Resolve,
        context: ssl.SSLContext,
        *,
        timeout: float = 10.0,
        allow_private: bool = False,
        max_bytes: int = 64 * 1024,
    ) -> None:
        self.resolve = resolve
        self.context = context
        self.timeout = timeout
        self.allow_private = allow_private
        self.max_bytes = max_bytes

    async def request(
        self,
        method: str,
        host: str,
        port: int,
        path: str,
        *,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        """The first answer any of ``host``'s usable addresses gives."""
        where = f"https://{host}{'' if port == 443 else f':{port}'}{path}"
        try:
            async with asyncio.timeout(self.timeout):
                return await self._request(method, host, port, path, where, content, headers)
        except TimeoutError:
            raise HttpsError(f"{method} {where} took over {self.timeout:g}s") from None

    async def _request(
        self,
        method: str,
        host: str,
        port: int,
        path: str,
        where: str,
        content: bytes | None,
        headers: dict[str, str] | None,
    ) -> Answer:
        addresses = await self.resolve(host)
        if not self.allow_private:
            addresses = [a for a in addresses if is_public(a)]
        if not addresses:
            raise HttpsError(f"{host} has no usable address")
        errors = []
        sent = {"Host": host, "Accept-Encoding": "identity", **(headers or {})}
        async with httpx.AsyncClient(
            verify=self.context, follow_redirects=False, trust_env=False
        ) as client:
            for address in addresses:
                literal = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
                request = client.build_request(
                    method,
                    f"https://{literal}:{port}{path}",
                    headers=sent,
                    content=content,
                    extensions={"sni_hostname": host},
                )
                try:
                    return await self._read(await client.send(request, stream=True), where)
                except (httpx.HTTPError, ssl.SSLError, OSError) as exc:
                    errors.append(f"{address}: {type(exc).__name__}: {exc}")
        raise HttpsError(f"{method} {where} failed: {'; '.join(errors)}")

    async def _read(self, response: httpx.Response, where: str) -> Answer:
        try:
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > self.max_bytes:
                    raise HttpsError(f"{where}: the answer is over {self.max_bytes} bytes")
            kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
            return Answer(response.status_code, kind, bytes(body))
        finally:
            await response.aclose()
