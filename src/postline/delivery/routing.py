"""Where to connect for a destination domain: static routes, a relay, or MX records."""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver


@dataclass(frozen=True)
class Target:
    host: str  # what to connect to (a name or an address)
    port: int
    mx: str  # the MX host name, for the timeline


class RouteError(Exception):
    """No host to deliver to; ``permanent`` says whether to stop trying."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


class Router:
    def __init__(
        self,
        *,
        nameservers: list[tuple[str, int]],
        delivery_port: int,
        relay: tuple[str, int] | None = None,
        static: dict[str, tuple[str, int]] | None = None,
        lifetime: float = 10.0,
    ) -> None:
        self.delivery_port = delivery_port
        self.relay = relay
        self.static = dict(static or {})
        resolver = dns.asyncresolver.Resolver(configure=not nameservers)
        if nameservers:
            resolver.nameservers = [host for host, _ in nameservers]
            resolver.nameserver_ports = dict(nameservers)
        resolver.lifetime = lifetime
        resolver.timeout = min(lifetime, 3.0)
        self.resolver = resolver

    async def route(self, domain: str) -> list[Target]:
        if domain in self.static:
            host, port = self.static[domain]
            return [Target(host, port, host)]
        if self.relay is not None:
            return [Target(self.relay[0], self.relay[1], self.relay[0])]
        return await self._mx(domain)

    async def _mx(self, domain: str) -> list[Target]:
        try:
            answer = await self.resolver.resolve(domain, "MX")
        except dns.resolver.NXDOMAIN:
            raise RouteError(f"domain {domain} does not exist", permanent=True) from None
        except dns.resolver.NoAnswer:
            return await self._implicit_mx(domain)
        except (dns.resolver.NoNameservers, dns.exception.Timeout) as exc:
            raise RouteError(f"DNS lookup for {domain} failed: {exc}", permanent=False) from None
        records = [(r.preference, r.exchange.to_text(omit_final_dot=True)) for r in answer]
        if any(exchange in ("", ".") for _, exchange in records) and len(records) == 1:
            raise RouteError(f"{domain} accepts no mail (null MX)", permanent=True)
        # RFC 5321 5.1: lowest preference first, random order among equals.
        random.shuffle(records)
        records.sort(key=lambda item: item[0])
        return [Target(host, self.delivery_port, host) for _, host in records if host]

    async def _implicit_mx(self, domain: str) -> list[Target]:
        """RFC 5321 5.1: no MX records means the domain's own address is the MX."""
        for rdtype in ("A", "AAAA"):
            try:
                await self.resolver.resolve(domain, rdtype)
            except dns.resolver.NoAnswer:
                continue
            except dns.resolver.NXDOMAIN:
                raise RouteError(f"domain {domain} does not exist", permanent=True) from None
            except (dns.resolver.NoNameservers, dns.exception.Timeout) as exc:
                raise RouteError(
                    f"DNS lookup for {domain} failed: {exc}", permanent=False
                ) from None
            return [Target(domain, self.delivery_port, domain)]
        raise RouteError(f"{domain} has no MX or address records", permanent=True)

    async def addresses(self, host: str) -> list[str]:
        """Resolve an MX host name through our resolver (not the system's)."""
        if _is_ip(host):
            return [host]
        found: list[str] = []
        for rdtype in ("A", "AAAA"):
            try:
                answer = await self.resolver.resolve(host, rdtype)
            except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
                continue
            except (dns.resolver.NoNameservers, dns.exception.Timeout):
                continue
            found.extend(r.to_text() for r in answer)
        return found


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


async def lookup_texts(resolver: dns.asyncresolver.Resolver, name: str, rdtype: str) -> list[str]:
    """TXT strings (joined per record) or MX 'pref host' lines; [] when absent or unreachable."""
    try:
        answer = await resolver.resolve(name, rdtype)
    except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN, dns.resolver.NoNameservers):
        return []
    except dns.exception.Timeout:
        return []
    if rdtype == "TXT":
        return [b"".join(r.strings).decode(errors="replace") for r in answer]
    return [f"{r.preference} {r.exchange.to_text(omit_final_dot=True)}" for r in answer]
