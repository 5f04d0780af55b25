"""What TLS a connection to one MX must have, and what it had.

A destination's policy (the operator's ``POSTLINE_TLS_POLICIES``, MTA-STS, DANE)
becomes one :class:`TlsDemand` per MX host; the session pool opens connections
to meet it and tells what it got in a :class:`TlsInfo`, which goes on the
recipient's timeline row. Whenever a demand is anything but opportunistic,
there is no plaintext fallback: a server that cannot meet it is deferred.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from postline.delivery.routing import RouteError
from postline.model import TlsInfo
from postline.model import TlsPolicySource as PolicySource

__all__ = ["PolicySource", "TlsInfo"]


class TlsLevel(StrEnum):
    """How hard to insist on STARTTLS (Postfix's may / encrypt / verify / dane)."""

    OPPORTUNISTIC = "opportunistic"  # upgrade when offered, any certificate
    REQUIRE = "require"  # STARTTLS or no delivery, any certificate
    VERIFY = "verify"  # STARTTLS with a certificate valid for the MX host name (WebPKI)
    DANE = "dane"  # STARTTLS with a certificate matching the MX host's TLSA records


@dataclass(frozen=True)
class Tlsa:
    """One usable TLSA record (RFC 6698): usage 2 or 3, selector 0/1, matching type 0/1/2."""

    usage: int
    selector: int
    mtype: int
    data: bytes


@dataclass(frozen=True)
class TlsDemand:
    level: TlsLevel
    source: PolicySource
    #: DANE: the records the certificate must match (empty for other levels).
    tlsa: tuple[Tlsa, ...] = ()
    #: MTA-STS testing: the MX is not one the policy names (reported, delivered anyway).
    unlisted: bool = False
    #: DANE: why this MX may not be used at all (its TLSA lookup failed); None: it may.
    unusable: str | None = None

    @property
    def key(self) -> str:
        """Sessions are pooled per demand: one opened for a weaker one never serves a stronger."""
        digest = hash(self.tlsa) if self.tlsa else 0
        return f"{self.level}:{self.source}:{digest:x}:{int(self.unlisted)}"


OPPORTUNISTIC = TlsDemand(TlsLevel.OPPORTUNISTIC, PolicySource.OPPORTUNISTIC)
#: An operator's own route (relay, static): as before, STARTTLS when offered.
OWN_ROUTE = TlsDemand(TlsLevel.OPPORTUNISTIC, PolicySource.NONE)


@dataclass(frozen=True)
class TlsPlan:
    """The demand on each MX host of one delivery (a DANE host may differ from the next)."""

    default: TlsDemand = OPPORTUNISTIC
    per_mx: Mapping[str, TlsDemand] = field(default_factory=dict)

    def for_mx(self, mx: str) -> TlsDemand:
        return self.per_mx.get(mx, self.default)


class PolicyError(RouteError):
    """A destination's TLS policy leaves no MX to deliver to: always a deferral."""

    def __init__(self, message: str, *, policy: PolicySource, rule: str, result_type: str) -> None:
        """``result_type``: the failure as TLS reports name it (RFC 8460 4.3)."""
        super().__init__(message, permanent=False, rule=rule)
        self.policy = policy
        self.result_type = result_type
