"""DANE's DNS side (RFC 7672 2.2): which MX hosts have TLSA records we may believe.

Only answers DNSSEC vouches for count. With ``POSTLINE_DNSSEC=trust-local`` that
is the AD bit of a resolver on loopback that the operator declares validating
(a remote resolver's AD bit crosses a network anyone on the path may rewrite,
so it is never trusted; the setting refuses non-loopback nameservers). With
``POSTLINE_DNSSEC=validate`` Postline checks the signatures itself
(:mod:`postline.delivery.dnssec_validate`) and a bogus answer, wherever it is met,
makes the hosts it concerns unusable: DANE is never downgraded by a forgery.

Per destination, in order:

1. its MX RRset must be secure, else DANE does not apply (2.2.1);
2. per MX host, its address records must be secure, else DANE does not apply
   to that host (2.2.2);
3. ``_25._tcp.<host>`` TLSA: secure records are the host's DANE demand; none
   (NXDOMAIN, NODATA) means no DANE; a failure (SERVFAIL, timeout) for a host
   whose zone is signed is a deferral, never a downgrade (2.2, "bogus").

Answers are cached for their TTL (negative ones for :data:`NEGATIVE_TTL`),
failures not at all: with DANE off none of this runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.resolver

from postline.delivery import dane
from postline.delivery.dnssec_validate import Bogus, Status, Unanswered, Validator
from postline.delivery.routing import Target
from postline.delivery.tls import PolicySource, Tlsa, TlsDemand, TlsLevel
from postline.singleflight import SingleFlight

#: How long a negative or insecure answer is believed.
NEGATIVE_TTL = 300.0
#: Answers remembered (the oldest are forgotten beyond this).
MAX_REMEMBERED = 100_000


class LookupFailed(Exception):
    """SERVFAIL or no answer: the truth is unknown."""


class BogusAnswer(LookupFailed):
    """Postline's own validation found the answer forged, broken or expired."""


@dataclass(frozen=True)
class _Answer:
    secure: bool
    records: tuple[Tlsa, ...] | None  # None: not asked for records (MX, A); () none found
    until: float


def validating_resolver(
    nameservers: list[tuple[str, int]], lifetime: float = 10.0, *, check: bool = False
) -> dns.asyncresolver.Resolver:
    """A resolver asking for DNSSEC (DO) and reading the AD bit (the settings have
    checked that ``nameservers`` are on loopback); with ``check`` (Postline validates)
    it sets CD instead, to be handed even what the resolver judged bogus, and with no
    ``nameservers`` uses the system's."""
    resolver = dns.asyncresolver.Resolver(configure=check and not nameservers)
    if nameservers:
        resolver.nameservers = [host for host, _ in nameservers]
        resolver.nameserver_ports = dict(nameservers)
    resolver.use_edns(0, dns.flags.DO, 1232)
    resolver.flags = dns.flags.RD | (dns.flags.CD if check else dns.flags.AD)
    resolver.lifetime = lifetime
    resolver.timeout = min(lifetime, 3.0)
    return resolver


class TlsaLookup:
    def __init__(
        self, resolver: dns.asyncresolver.Resolver, validator: Validator | None = None
    ) -> None:
        self.resolver = resolver
        self.validator = validator
        self._cache: dict[tuple[str, str], _Answer] = {}
        self._asking: SingleFlight[tuple[str, str], _Answer] = SingleFlight()

    async def demands(self, domain: str, targets: list[Target]) -> dict[str, TlsDemand]:
        """The DANE demand of each MX host that has one (``unusable`` for a host whose
        TLSA lookup failed: it must not be tried at all)."""
        try:
            mx = await self._ask(domain, "MX")
        except BogusAnswer as exc:
            # RFC 7672 2.2.1: a bogus MX RRset makes the destination undeliverable for now.
            reason = f"DANE: the MX answer for {domain} is bogus ({exc})"
            unusable = TlsDemand(TlsLevel.DANE, PolicySource.DANE, unusable=reason)
            return {t.mx: unusable for t in targets}
        except LookupFailed:
            return {}  # the router got its MX: if DNSSEC cannot say, DANE does not apply
        if not mx.secure:
            return {}
        found: dict[str, TlsDemand] = {}
        for host in dict.fromkeys(t.mx for t in targets):
            demand = await self._host(host)
            if demand is not None:
                found[host] = demand
        return found

    async def _host(self, host: str) -> TlsDemand | None:
        try:
            address = await self._ask(host, "A")
            if not address.secure:
                address = await self._ask(host, "AAAA")
        except BogusAnswer as exc:
            reason = f"DANE: the address answer for {host} is bogus ({exc})"
            return TlsDemand(TlsLevel.DANE, PolicySource.DANE, unusable=reason)
        except LookupFailed:
            address = _Answer(False, None, 0.0)
        if not address.secure:
            return None
        name = f"_25._tcp.{host}"
        try:
            tlsa = await self._ask(name, "TLSA")
        except BogusAnswer as exc:
            reason = f"DANE: the TLSA answer for {name} is bogus ({exc})"
            return TlsDemand(TlsLevel.DANE, PolicySource.DANE, unusable=reason)
        except LookupFailed as exc:
            # RFC 7672 2.2: the host is unusable (never used without DANE); others may be.
            reason = f"DANE: the TLSA lookup for {name} failed ({exc}) in a signed zone"
            return TlsDemand(TlsLevel.DANE, PolicySource.DANE, unusable=reason)
        if not tlsa.secure or not tlsa.records:
            return None
        usable = tuple(r for r in tlsa.records if dane.usable(r))
        if not usable:
            # RFC 7672 2.2: only unusable records: TLS is still mandatory, unauthenticated.
            return TlsDemand(TlsLevel.REQUIRE, PolicySource.DANE)
        return TlsDemand(TlsLevel.DANE, PolicySource.DANE, usable)

    async def _ask(self, name: str, rdtype: str) -> _Answer:
        key = (rdtype, name)
        cached = self._cache.get(key)
        if cached is not None and cached.until > time.monotonic():
            return cached
        return await self._asking.run(key, lambda: self._look_up(key))

    async def _look_up(self, key: tuple[str, str]) -> _Answer:
        """The answer for ``key`` from DNS, remembered until its TTL (once for the
        deliveries that missed the cache together: ``SingleFlight``)."""
        rdtype, name = key
        found = await (self._validate if self.validator else self._trust_ad)(name, rdtype)
        self._cache.pop(key, None)
        self._cache[key] = found
        if len(self._cache) > MAX_REMEMBERED:
            del self._cache[next(iter(self._cache))]
        return found

    async def _validate(self, name: str, rdtype: str) -> _Answer:
        """POSTLINE_DNSSEC=validate: Postline's own verdict."""
        assert self.validator is not None
        try:
            answer = await self.validator.resolve(name, rdtype)
        except Bogus as exc:
            raise BogusAnswer(str(exc)) from None
        except Unanswered as exc:
            raise LookupFailed(str(exc)) from None
        rrset = answer.rrset
        records = None
        if rdtype == "TLSA":
            records = tuple(Tlsa(r.usage, r.selector, r.mtype, bytes(r.cert)) for r in rrset or ())
        ttl = answer.ttl if rrset is not None else NEGATIVE_TTL
        return _Answer(answer.status is Status.SECURE, records, time.monotonic() + ttl)

    async def _trust_ad(self, name: str, rdtype: str) -> _Answer:
        """POSTLINE_DNSSEC=trust-local: the loopback resolver's AD bit."""
        try:
            answer = await self.resolver.resolve(name, rdtype)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            found = _Answer(False, (), time.monotonic() + NEGATIVE_TTL)
        except dns.resolver.NoNameservers as exc:
            raise LookupFailed(f"SERVFAIL: {exc}") from None
        except dns.exception.DNSException as exc:
            raise LookupFailed(f"{type(exc).__name__}: {exc}") from None
        else:
            secure = bool(answer.response.flags & dns.flags.AD)
            records = None
            if rdtype == "TLSA":
                records = tuple(Tlsa(r.usage, r.selector, r.mtype, bytes(r.cert)) for r in answer)
            ttl = max(0.0, answer.expiration - time.time())
            found = _Answer(secure, records, time.monotonic() + ttl)
        return found
