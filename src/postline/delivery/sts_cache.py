"""Which MTA-STS policy is in force for a destination, without fetching on the hot path.

Three layers, cheapest first:

1. this process's memory: a domain's answer (a policy, or none) until its TXT
   record's TTL runs out; a domain without ``_mta-sts`` TXT costs one lookup
   per negative TTL, then nothing;
2. the store (``mta_sts_policies``): the policies every worker fetched, used
   until their ``max_age`` runs out, across restarts;
3. the fetch (``sts_fetch.py``), on the delivery path only when no usable
   policy is stored. A stored policy is refreshed in the background: when the
   TXT id changes, and once half its ``max_age`` has passed. A failed refresh
   keeps the stored policy (RFC 8461 5.1) and notes the error.

A TXT lookup that fails (SERVFAIL, timeout) or says there is no record leaves
a stored policy in force until it expires: removing a policy takes publishing
``mode: none`` (RFC 8461 8.3).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import dns.asyncresolver
import dns.exception
import dns.message
import dns.rdatatype
import dns.resolver

from postline.delivery.mtasts import StsMode, StsPolicy, parse_txt
from postline.delivery.sts_fetch import FetchError, PolicyFetcher
from postline.singleflight import SingleFlight
from postline.store import mta_sts as sts_store
from postline.store.db import Database
from postline.store.types import Clock, utcnow

log = logging.getLogger("postline.mta_sts")

#: How long "no _mta-sts TXT record" is believed when the answer carries no SOA.
NEGATIVE_TTL = 300.0
#: How long a failed TXT lookup's verdict (the stored policy, or none) is kept.
FAILED_LOOKUP_TTL = 60.0
#: A policy fetched inline that failed is not asked again for this long.
FAILED_FETCH_TTL = 60.0
#: Domains remembered in memory (the oldest are forgotten beyond this).
MAX_REMEMBERED = 100_000


#: Told of a failed fetch: (domain, RFC 8460 policy type, result type), for TLS reports.
OnFetchFailed = Callable[[str, str, str], None]


@dataclass(frozen=True)
class _Txt:
    policy_id: str | None  # None: no usable STS record
    ttl: float
    failed: bool = False  # the lookup itself failed: nothing is known


@dataclass(frozen=True)
class _Memo:
    policy: StsPolicy | None
    until: float  # monotonic
    refresh_at: datetime | None  # when the policy should be fetched again


class MtaSts:
    def __init__(
        self,
        db: Database,
        resolver: dns.asyncresolver.Resolver,
        fetcher: PolicyFetcher,
        *,
        clock: Clock = utcnow,
        on_fetch_failed: OnFetchFailed | None = None,
    ) -> None:
        self.db = db
        self.on_fetch_failed = on_fetch_failed
        self.resolver = resolver
        self.fetcher = fetcher
        self.clock = clock
        self._memo: dict[str, _Memo] = {}
        self._refreshing: dict[str, asyncio.Task[None]] = {}
        self._fetching: dict[str, asyncio.Lock] = {}
        self._looking_up: SingleFlight[str, StsPolicy | None] = SingleFlight()

    async def policy(self, domain: str) -> StsPolicy | None:
        """The policy in force (enforce or testing), None when there is none."""
        memo = self._memo.get(domain)
        if memo is not None and memo.until > time.monotonic():
            if memo.refresh_at is not None and self.clock() >= memo.refresh_at:
                self._refresh_later(domain, memo.policy.policy_id if memo.policy else "")
            return _in_force(memo.policy)
        return await self._looking_up.run(domain, lambda: self._look_up(domain))

    async def _look_up(self, domain: str) -> StsPolicy | None:
        """:meth:`policy` when this process has no memo of ``domain``: DNS, the
        store, maybe a fetch (once for the deliveries that missed together)."""
        txt = await self._txt(domain)
        async with self.db.read() as conn:
            stored = await sts_store.get_policy(conn, domain)
        now = self.clock()
        current = _from_store(stored) if stored and stored.expires_at > now else None
        expires = stored.expires_at if current is not None and stored else now
        ttl = txt.ttl
        if txt.policy_id is not None and (current is None or current.policy_id != txt.policy_id):
            if current is not None:
                self._refresh_later(domain, txt.policy_id)  # the id changed: fetch it anew
            else:
                current = await self._fetch_inline(domain, txt.policy_id)
                if current is None:
                    ttl = min(ttl, FAILED_FETCH_TTL)
                else:
                    expires = now + timedelta(seconds=current.max_age)
        refresh_at = None
        if current is not None:
            ttl = min(ttl, (expires - now).total_seconds())
            refresh_at = expires - timedelta(seconds=current.max_age / 2)
        self._memo.pop(domain, None)
        self._memo[domain] = _Memo(current, time.monotonic() + ttl, refresh_at)
        if len(self._memo) > MAX_REMEMBERED:
            del self._memo[next(iter(self._memo))]
        if refresh_at is not None and now >= refresh_at and current is not None:
            self._refresh_later(domain, current.policy_id)
        return _in_force(current)

    def forget(self, domain: str) -> None:
        """Drop this process's memory of ``domain`` (the store is asked again)."""
        self._memo.pop(domain, None)

    async def close(self) -> None:
        for task in list(self._refreshing.values()):
            task.cancel()
        await asyncio.gather(*self._refreshing.values(), return_exceptions=True)
        await self._looking_up.close()

    async def _txt(self, domain: str) -> _Txt:
        name = f"_mta-sts.{domain}"
        try:
            answer = await self.resolver.resolve(name, "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer) as exc:
            return _Txt(None, _negative_ttl(exc))
        except (dns.resolver.NoNameservers, dns.exception.Timeout, dns.exception.DNSException):
            return _Txt(None, FAILED_LOOKUP_TTL, failed=True)
        texts = [b"".join(r.strings).decode(errors="replace") for r in answer]
        ttl = max(0.0, answer.expiration - time.time())
        return _Txt(parse_txt(texts), ttl)

    async def _fetch_inline(self, domain: str, policy_id: str) -> StsPolicy | None:
        """No usable stored policy: fetch now (one fetch per domain at a time)."""
        lock = self._fetching.setdefault(domain, asyncio.Lock())
        try:
            async with lock:
                return await self._fetch_once(domain, policy_id)
        finally:
            if not lock.locked():
                self._fetching.pop(domain, None)

    async def _fetch_once(self, domain: str, policy_id: str) -> StsPolicy | None:
        async with self.db.read() as conn:
            stored = await sts_store.get_policy(conn, domain)
        fetched = stored is not None and stored.policy_id == policy_id
        if stored is not None and fetched and stored.expires_at > self.clock():
            return _from_store(stored)  # another delivery fetched it meanwhile
        # No policy in force: a failure is reported as "no-policy-found" (RFC 8460 4.2).
        return await self._fetch_and_store(domain, policy_id, "no-policy-found")

    async def _fetch_and_store(
        self, domain: str, policy_id: str, policy_type: str = "sts"
    ) -> StsPolicy | None:
        try:
            policy = await self.fetcher.fetch(domain, policy_id)
        except FetchError as exc:
            log.warning("MTA-STS policy of %s: %s", domain, exc)
            if self.on_fetch_failed is not None:
                self.on_fetch_failed(domain, policy_type, exc.result_type)
            async with self.db.write() as conn:
                await sts_store.note_error(conn, domain, str(exc))
            return None
        now = self.clock()
        async with self.db.write() as conn:
            await sts_store.put_policy(
                conn,
                domain=domain,
                policy_id=policy.policy_id,
                mode=str(policy.mode),
                patterns=policy.patterns,
                max_age=policy.max_age,
                fetched_at=now,
                expires_at=now + timedelta(seconds=policy.max_age),
            )
        log.info("MTA-STS policy of %s: %s (id %s)", domain, policy.mode, policy.policy_id)
        return policy

    def _refresh_later(self, domain: str, policy_id: str) -> None:
        """Fetch in the background; the policy in force stays until it succeeds."""
        if domain in self._refreshing:
            return

        async def refresh() -> None:
            try:
                fresh = await self._fetch_and_store(domain, policy_id)
                if fresh is not None:
                    self.forget(domain)
            except Exception:
                log.exception("refreshing the MTA-STS policy of %s failed", domain)
            finally:
                self._refreshing.pop(domain, None)

        self._refreshing[domain] = asyncio.create_task(refresh(), name=f"mta-sts:{domain}")


def _in_force(policy: StsPolicy | None) -> StsPolicy | None:
    if policy is None or policy.mode is StsMode.NONE:
        return None
    return policy


def _from_store(stored: sts_store.StoredPolicy) -> StsPolicy:
    return StsPolicy(stored.policy_id, StsMode(stored.mode), stored.patterns, stored.max_age)


def _negative_ttl(exc: dns.exception.DNSException) -> float:
    """The negative answer's TTL: the SOA's in its authority section (RFC 2308), else a default."""
    responses: list[dns.message.Message] = []
    if isinstance(exc, dns.resolver.NXDOMAIN):
        responses = list(exc.kwargs.get("responses", {}).values())
    else:
        response = exc.kwargs.get("response")
        if isinstance(response, dns.message.Message):
            responses = [response]
    for response in responses:
        for rrset in response.authority:
            if rrset.rdtype == dns.rdatatype.SOA:
                return float(min(rrset.ttl, rrset[0].minimum))
    return NEGATIVE_TTL
