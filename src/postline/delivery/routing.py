"""Where to connect for a destination domain: static routes, a relay, or MX records."""

from __future__ import annotations

import ipaddress
import random
import time
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
        # (kind, name) -> (absolute expiry, records): DNS answers live for their TTL.
        self._cache: dict[tuple[str, str], tuple[float, list[tuple[int, str]]]] = {}

    async def route(self, domain: str) -> list[Target]:
        if domain in self.static:
            host, port = self.static[domain]
            return [Target(host, port, host)]
        if self.relay is not None:
            return [Target(self.relay[0], self.relay[1], self.relay[0])]
        return await self._mx(domain)

    async def _mx(self, domain: str) -> list[Target]:
        records = await self._mx_records(domain)
        # RFC 5321 5.1: lowest preference first, random order among equals (per attempt).
        shuffled = random.sample(records, len(records))
        shuffled.sort(key=lambda item: item[0])
        return [Target(host, self.delivery_port, host) for _, host in shuffled]

    async def _mx_records(self, domain: str) -> list[tuple[int, str]]:
        """(preference, host) for the domain, cached for the records' TTL."""
        cached = self._cache.get(("MX", domain))
        if cached is not None and cached[0] > time.time():
            return cached[1]
        try:
            answer = await self.resolver.resolve(domain, "MX")
        except dns.resolver.NXDOMAIN:
            raise _no_such_domain(domain) from None
        except dns.resolver.NoAnswer:
            records, expiration = await self._implicit_mx(domain)
        except (dns.resolver.NoNameservers, dns.exception.Timeout) as exc:
            raise _lookup_failed(domain, exc) from None
        else:
            records = [(r.preference, r.exchange.to_text(omit_final_dot=True)) for r in answer]
            expiration = answer.expiration
            if len(records) == 1 and records[0][1] in ("", "."):
                raise RouteError(f"{domain} accepts no mail (null MX)", permanent=True)
            records = [(pref, host) for pref, host in records if host not in ("", ".")]
        self._cache[("MX", domain)] = (expiration, records)
        return records

    async def _implicit_mx(self, domain: str) -> tuple[list[tuple[int, str]], float]:
        """RFC 5321 5.1: no MX records means the domain's own address is the MX."""
        for rdtype in ("A", "AAAA"):
            try:
                answer = await self.resolver.resolve(domain, rdtype)
            except dns.resolver.NoAnswer:
                continue
            except dns.resolver.NXDOMAIN:
                raise _no_such_domain(domain) from None
            except (dns.resolver.NoNameservers, dns.exception.Timeout) as exc:
                raise RouteError(
                    f"DNS lookup for {domain} failed: {exc}", permanent=False
                ) from None
            return [(0, domain)], answer.expiration
        raise RouteError(f"{domain} has no MX or address records", permanent=True)

    async def addresses(self, host: str) -> list[str]:
        """Resolve an MX host name through our resolver (not the system's), TTL-cached."""
        if _is_ip(host):
            return [host]
        cached = self._cache.get(("ADDR", host))
        if cached is not None and cached[0] > time.time():
            return [address for _, address in cached[1]]
        found: list[str] = []
        expiration = time.time() + 60
        for rdtype in ("A", "AAAA"):
            try:
                answer = await self.resolver.resolve(host, rdtype)
            except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
                continue
            except (dns.resolver.NoNameservers, dns.exception.Timeout):
                return found  # not cached: try again next time
            expiration = min(expiration, answer.expiration)
            found.extend(r.to_text() for r in answer)
        if found:
            self._cache[("ADDR", host)] = (expiration, [(0, address) for address in found])
        return found


def _no_such_domain(domain: str) -> RouteError:
    return RouteError(f"domain {domain} does not exist", permanent=True)


def _lookup_failed(domain: str, exc: Exception) -> RouteError:
    return RouteError(f"DNS lookup for {domain} failed: {exc}", permanent=False)


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
