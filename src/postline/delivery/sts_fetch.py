"""Fetch an MTA-STS policy file over HTTPS (RFC 8461 3.3).

``https://mta-sts.<domain>/.well-known/mta-sts.txt``: the certificate verified
for that name (system trust anchors plus ``POSTLINE_TLS_CA_FILE``), no
redirects (a 3xx is a failure), at most :data:`MAX_POLICY_BYTES` read and the
whole fetch bounded in time. The host name is resolved through Postline's own
resolver and its addresses checked against the address policy like an MX's, so
a domain's DNS cannot point the fetch at the operator's internal network.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from collections.abc import Awaitable, Callable

import httpx

from postline.delivery.mtasts import StsError, StsPolicy, parse_policy
from postline.netpolicy import is_public

#: RFC 8461 3.3 suggests a limit of 64 KiB; policies are a few lines.
MAX_POLICY_BYTES = 64 * 1024
POLICY_PATH = "/.well-known/mta-sts.txt"

Resolve = Callable[[str], Awaitable[list[str]]]


class FetchError(Exception):
    """The policy could not be fetched or was not a policy: one line saying why."""


class PolicyFetcher:
    def __init__(
        self,
        resolve: Resolve,
        context: ssl.SSLContext,
        *,
        port: int = 443,
        timeout: float = 10.0,
        allow_private: bool = False,
    ) -> None:
        self.resolve = resolve
        self.context = context
        self.port = port
        self.timeout = timeout
        self.allow_private = allow_private

    async def fetch(self, domain: str, policy_id: str) -> StsPolicy:
        """The policy published for ``domain``, recorded as fetched for ``policy_id``."""
        host = f"mta-sts.{domain}"
        try:
            async with asyncio.timeout(self.timeout):
                text = await self._get(host)
        except TimeoutError:
            raise FetchError(f"fetching {host}{POLICY_PATH} took over {self.timeout:g}s") from None
        try:
            return parse_policy(text, policy_id)
        except StsError as exc:
            raise FetchError(f"{host}{POLICY_PATH}: not a policy: {exc}") from None

    async def _get(self, host: str) -> str:
        addresses = await self.resolve(host)
        if not self.allow_private:
            addresses = [a for a in addresses if is_public(a)]
        if not addresses:
            raise FetchError(f"{host} has no usable address")
        errors = []
        async with httpx.AsyncClient(
            verify=self.context, follow_redirects=False, trust_env=False
        ) as client:
            for address in addresses:
                try:
                    return await self._get_from(client, host, address)
                except (httpx.HTTPError, ssl.SSLError, OSError) as exc:
                    errors.append(f"{address}: {type(exc).__name__}: {exc}")
        raise FetchError(f"fetching https://{host}{POLICY_PATH} failed: {'; '.join(errors)}")

    async def _get_from(self, client: httpx.AsyncClient, host: str, address: str) -> str:
        literal = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
        url = f"https://{literal}:{self.port}{POLICY_PATH}"
        # Connected to the address we checked; SNI and the certificate check use the name.
        request = client.build_request(
            "GET",
            url,
            headers={"Host": host, "Accept-Encoding": "identity"},
            extensions={"sni_hostname": host},
        )
        response = await client.send(request, stream=True)
        try:
            if response.status_code != 200:
                raise FetchError(f"https://{host}{POLICY_PATH} answered {response.status_code}")
            kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
            if kind != "text/plain":
                raise FetchError(
                    f"https://{host}{POLICY_PATH} is {kind or 'untyped'}, not text/plain"
                )
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_POLICY_BYTES:
                    raise FetchError(
                        f"https://{host}{POLICY_PATH} is over {MAX_POLICY_BYTES} bytes"
                    )
            return body.decode("utf-8", errors="replace")
        finally:
            await response.aclose()
