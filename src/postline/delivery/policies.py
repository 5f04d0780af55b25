"""Which TLS each MX of a destination must offer: DANE, MTA-STS, the operator's policy.

Precedence, strongest first (RFC 8461 2: DANE wins where both exist):

1. DANE: an MX host with TLSA records in a validated answer (``dane.py``);
2. MTA-STS ``enforce``: only MX hosts matching the policy, with a certificate
   valid for the MX name; no such host is a deferral (``mtasts/``);
3. the operator's ``POSTLINE_TLS_POLICIES`` / ``POSTLINE_TLS_DEFAULT``;
4. MTA-STS ``testing``: delivered as with no policy, failures reported;
5. none: STARTTLS when offered.

Any of 1-3 forbids plaintext. An operator's relay or static route is theirs:
only their own policy applies to it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Protocol

from postline.delivery.routing import Router, Target
from postline.delivery.tls import (
    OPPORTUNISTIC,
    OWN_ROUTE,
    PolicyError,
    PolicySource,
    TlsDemand,
    TlsLevel,
    TlsPlan,
)


class StsView(Protocol):
    """What the planner needs of an MTA-STS policy."""

    @property
    def enforcing(self) -> bool: ...

    @property
    def testing(self) -> bool: ...

    @property
    def patterns(self) -> tuple[str, ...]: ...

    def allows(self, mx: str) -> bool: ...


#: A destination's MTA-STS policy in force (None: none), without fetching when cached.
StsLookup = Callable[[str], Awaitable[StsView | None]]
#: A destination's DANE demands per MX host ({}: no DANE).
DaneLookup = Callable[[str, list[Target]], Awaitable[dict[str, TlsDemand]]]


class TlsPolicies:
    def __init__(
        self,
        router: Router,
        *,
        default: str = "opportunistic",
        configured: dict[str, str] | None = None,
        mta_sts: StsLookup | None = None,
        dane: DaneLookup | None = None,
    ) -> None:
        self.router = router
        self.default = TlsLevel(default)
        self.configured = {d: TlsLevel(level) for d, level in (configured or {}).items()}
        self.mta_sts = mta_sts
        self.dane = dane

    def _configured(self, domain: str) -> TlsDemand | None:
        level = self.configured.get(domain, self.default)
        if level is TlsLevel.OPPORTUNISTIC:
            return None
        return TlsDemand(level, PolicySource.CONFIGURED)

    async def plan(self, domain: str, targets: list[Target]) -> tuple[list[Target], TlsPlan]:
        """The targets to try, in order, and the demand on each."""
        configured = self._configured(domain)
        if not self.router.uses_mx(domain):
            return targets, TlsPlan(configured or OWN_ROUTE)
        per_mx = await self.dane(domain, targets) if self.dane is not None else {}
        targets = _usable(domain, targets, per_mx)
        sts = await self.mta_sts(domain) if self.mta_sts is not None else None
        if sts is not None and sts.enforcing:
            kept = [t for t in targets if t.mx in per_mx or sts.allows(t.mx)]
            if not kept:
                hosts = ", ".join(dict.fromkeys(t.mx for t in targets)) or "none"
                raise PolicyError(
                    f"MTA-STS policy of {domain} (enforce): MX {hosts} matches none of its"
                    f" mx patterns ({', '.join(sts.patterns)}); not delivered, will retry",
                    policy=PolicySource.MTA_STS,
                    rule="tls.mta_sts_mx_mismatch",
                    result_type="validation-failure",
                )
            return kept, TlsPlan(TlsDemand(TlsLevel.VERIFY, PolicySource.MTA_STS), per_mx)
        if configured is not None:
            return targets, TlsPlan(configured, per_mx)
        if sts is not None and sts.testing:
            testing = TlsDemand(TlsLevel.OPPORTUNISTIC, PolicySource.MTA_STS_TESTING)
            unlisted = replace(testing, unlisted=True)
            per_mx = {
                **{t.mx: unlisted for t in targets if not sts.allows(t.mx)},
                **per_mx,
            }
            return targets, TlsPlan(testing, per_mx)
        return targets, TlsPlan(OPPORTUNISTIC, per_mx)


def _usable(domain: str, targets: list[Target], per_mx: dict[str, TlsDemand]) -> list[Target]:
    """The targets DANE does not rule out; PolicyError when it rules out all of them."""
    kept = [t for t in targets if per_mx.get(t.mx) is None or not per_mx[t.mx].unusable]
    if kept or not targets:
        return kept
    reason = next(d.unusable for d in per_mx.values() if d.unusable)
    raise PolicyError(
        f"{reason}: {domain} not delivered without it, will retry",
        policy=PolicySource.DANE,
        rule="tls.dane_lookup_failed",
        result_type="dnssec-invalid",
    )
