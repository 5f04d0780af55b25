"""Where to connect for a destination domain: static routes, a relay, or MX records.

A resolver can lie: a laptop's filtering DNS answers NXDOMAIN for gmail.com.
A permanent verdict (NXDOMAIN, null MX) bounces and suppresses, so it is
believed only when the domain never resolved here before (successes are
remembered) and a canary name that must exist still resolves; otherwise it is
a deferral. Even a believed verdict suppresses for a while only (outcomes.py).

Whoever controls a recipient domain's DNS chooses where its MX points, so MX
addresses that are not public (netpolicy.py: loopback, private, link-local,
transition forms of those ...) are dropped before anything connects, unless
the operator allows private delivery. A domain left with none bounces without
a connection. The relay host and static routes (the sandbox simulator) are the
operator's own choice and are not filtered.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, replace

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from postline.model import BounceType
from postline.netpolicy import describe, is_address, is_public
from postline.singleflight import SingleFlight


@dataclass(frozen=True)
class Target:
    host: str  # what to connect to (a name or an address)
    port: int
    mx: str  # the MX host name, for the timeline
    # The only addresses to connect to, already checked against the address policy;
    # None: an operator's route (relay, static), resolved when connecting.
    addresses: tuple[str, ...] | None = None


class RouteError(Exception):
    """No host to deliver to; ``permanent`` says whether to stop trying, ``rule`` why.

    A permanent one bounces with ``enhanced_code`` and ``bounce_type``: hard (the
    domain does not take mail) suppresses for a while; block (our policy refuses
    the destination) suppresses nothing.
    """

    def __init__(
        self,
        message: str,
        *,
        permanent: bool,
        rule: str = "dns.lookup_failed",
        enhanced_code: str = "5.1.2",  # RFC 3463: bad destination system address
        bounce_type: BounceType = BounceType.HARD,
    ) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.rule = rule
        self.enhanced_code = enhanced_code
        self.bounce_type = bounce_type


#: Domains remembered as having resolved (the oldest are forgotten beyond this).
MAX_REMEMBERED = 100_000
#: How long a canary answer vouches for the resolver.
CANARY_SECONDS = 60.0
#: MX hosts and refused addresses named in a bounce, each.
NAMED_ADDRESSES = 4


class Router:
    def __init__(
        self,
        *,
        nameservers: list[tuple[str, int]],
        delivery_port: int,
        relay: tuple[str, int] | None = None,
        static: dict[str, tuple[str, int]] | None = None,
        lifetime: float = 10.0,
        canary: str = "",
        allow_private: bool = False,
    ) -> None:
        """``canary``: a name that must exist, looked up before believing that a domain
        does not; empty, no canary (only the memory of earlier successes guards).
        ``allow_private``: MX addresses are not filtered (labs, tests)."""
        self.delivery_port = delivery_port
        self.allow_private = allow_private
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
        #: The lookups under way, shared by the deliveries that missed the cache together.
        self._mx_lookups: SingleFlight[str, list[tuple[int, str]]] = SingleFlight()
        self._address_lookups: SingleFlight[str, list[str]] = SingleFlight()
        self.canary = canary.strip().rstrip(".")
        # Domains that resolved, in the order last seen: an NXDOMAIN for one of them
        # says more about the resolver than about the domain.
        self._resolved: dict[str, None] = {}
        self._canary_ok_until = 0.0

    def uses_mx(self, domain: str) -> bool:
        """Whether mail for ``domain`` goes to its MX hosts (not a relay or static route)."""
        return domain not in self.static and self.relay is None

    async def route(self, domain: str) -> list[Target]:
        if domain in self.static:
            host, port = self.static[domain]
            return [Target(host, port, host)]
        if self.relay is not None:
            return [Target(self.relay[0], self.relay[1], self.relay[0])]
        targets = await self._mx(domain)
        if self.allow_private:
            return targets
        return await self._public_only(targets)

    async def _public_only(self, targets: list[Target]) -> list[Target]:
        """The targets with their public addresses; a permanent RouteError if MX hosts
        resolved and every address was refused.

        Resolved here, not when connecting, so that what was checked is what is
        connected to (a second lookup could answer differently). A host that did not
        resolve stays, with no address: that is a deferral, as before.
        """
        kept: list[Target] = []
        refused: list[str] = []
        for target in targets:
            found = await self.addresses(target.host)
            public = tuple(address for address in found if is_public(address))
            refused.extend(address for address in found if address not in public)
            if public or not found:
                kept.append(replace(target, addresses=public))
        if kept or not refused:
            return kept
        hosts = list(dict.fromkeys(target.mx for target in targets))
        named = _first_few([describe(address) for address in refused], "; ")
        verb = "resolves" if len(hosts) == 1 else "resolve"
        raise RouteError(
            f"MX {_first_few(hosts, ', ')} {verb} only to non-public addresses ({named}); "
            "delivery to them needs POSTLINE_DELIVERY_ALLOW_PRIVATE=true",
            permanent=True,
            rule="dns.private_address",
            enhanced_code="5.4.4",  # RFC 3463: unable to route
            bounce_type=BounceType.BLOCK,
        )

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
            records = await self._mx_lookups.run(domain, lambda: self._lookup_mx(domain))
        except RouteError as exc:
            if exc.permanent:
                raise await self._judge(domain, exc) from None
            raise
        self._remember(domain)
        return records

    async def _lookup_mx(self, domain: str) -> list[tuple[int, str]]:
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
                raise RouteError(
                    f"{domain} accepts no mail (null MX)", permanent=True, rule="dns.null_mx"
                )
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
        raise RouteError(
            f"{domain} has no MX or address records", permanent=True, rule="dns.no_address"
        )

    def _remember(self, domain: str) -> None:
        self._resolved.pop(domain, None)
        self._resolved[domain] = None
        if len(self._resolved) > MAX_REMEMBERED:
            del self._resolved[next(iter(self._resolved))]

    async def _judge(self, domain: str, verdict: RouteError) -> RouteError:
        """A permanent DNS verdict, unless the resolver cannot be trusted: then a deferral."""
        if domain in self._resolved:
            return RouteError(
                f"{verdict}, yet it resolved before: not trusted, will retry",
                permanent=False,
                rule="dns.contradicts_earlier",
            )
        if not await self._canary_resolves():
            return RouteError(
                f"{verdict}, yet the resolver cannot find {self.canary} either: not trusted,"
                " will retry",
                permanent=False,
                rule="dns.canary_failed",
            )
        return verdict

    async def _canary_resolves(self) -> bool:
        """Whether the canary name exists for our resolver (a success is kept a minute)."""
        if not self.canary or self._canary_ok_until > time.monotonic():
            return True
        try:
            await self.resolver.resolve(self.canary, "MX")
        except dns.resolver.NoAnswer:
            pass  # the name exists, with no MX: the resolver told the truth
        except dns.exception.DNSException:
            return False
        self._canary_ok_until = time.monotonic() + CANARY_SECONDS
        return True

    async def addresses(self, host: str) -> list[str]:
        """Resolve an MX host name through our resolver (not the system's), TTL-cached."""
        if is_address(host):
            return [host]
        cached = self._cache.get(("ADDR", host))
        if cached is not None and cached[0] > time.time():
            return [address for _, address in cached[1]]
        return list(await self._address_lookups.run(host, lambda: self._lookup_addresses(host)))

    async def _lookup_addresses(self, host: str) -> list[str]:
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


def _first_few(items: list[str], separator: str) -> str:
    """At most NAMED_ADDRESSES items, and how many more (a tenant's DNS may list hundreds)."""
    text = separator.join(items[:NAMED_ADDRESSES])
    if len(items) > NAMED_ADDRESSES:
        text += f"{separator}and {len(items) - NAMED_ADDRESSES} more"
    return text


def _no_such_domain(domain: str) -> RouteError:
    return RouteError(f"domain {domain} does not exist", permanent=True, rule="dns.nxdomain")


def _lookup_failed(domain: str, exc: Exception) -> RouteError:
    return RouteError(f"DNS lookup for {domain} failed: {exc}", permanent=False)


async def lookup_texts(resolver: dns.asyncresolver.Resolver, name: str, rdtype: str) -> list[str]:
    """TXT strings (joined per record), CNAME targets or MX 'pref host' lines; [] when
    absent or unreachable."""
    try:
        answer = await resolver.resolve(name, rdtype)
    except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN, dns.resolver.NoNameservers):
        return []
    except dns.exception.Timeout:
        return []
    if rdtype == "TXT":
        return [b"".join(r.strings).decode(errors="replace") for r in answer]
    if rdtype == "CNAME":
        return [r.target.to_text(omit_final_dot=True) for r in answer]
    return [f"{r.preference} {r.exchange.to_text(omit_final_dot=True)}" for r in answer]
