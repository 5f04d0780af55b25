"""Where a domain's tracked links point: POSTLINE_TRACKING_URL, or the domain's own
tracking host (``PATCH /v1/domains/{id}`` ``{"tracking": {"host": ...}}``), a CNAME
under the domain that leads to the same place.

Links on the sending domain's own name look less like a stranger's redirect to the
reader and to filters. The host is served by the operator's reverse proxy, which
holds (or obtains on demand, asking ``GET /t/tls``) a certificate for it; Postline
answers ``/t/...`` on any ``Host``.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from postline.domains import DomainError, normalize_domain, return_path_domain


@dataclass(frozen=True)
class TrackingBase:
    """The base URL of one email's tracking links, from its domain's tracking host."""

    #: POSTLINE_TRACKING_URL (or the API's own address), without a final slash.
    default: str
    #: The scheme of links on a domain's own host (POSTLINE_TRACKING_HOST_SCHEME).
    scheme: str = "https"

    def of(self, host: str | None) -> str:
        """``default``; for a domain with a host, that host under ``scheme``, with the path
        of ``default`` kept (a proxy that serves Postline under a prefix serves the
        CNAME's requests the same way)."""
        if not host:
            return self.default
        path = urlsplit(self.default).path.rstrip("/")
        return f"{self.scheme}://{host}{path}"


def cname_target(tracking_url: str, hostname: str) -> str:
    """What a tracking host's CNAME points at: the host of POSTLINE_TRACKING_URL, else
    POSTLINE_HOSTNAME (whose A record points at this host)."""
    host = urlsplit(tracking_url).hostname if tracking_url else None
    return host or hostname


def check_tracking_host(domain: str, host: str, taken: set[str]) -> str:
    """``host`` normalised; DomainError unless it is a name strictly under ``domain``
    that no other record of the domain uses (a CNAME stands alone at its name)."""
    name = normalize_domain(host)
    if not name.endswith("." + domain):
        raise DomainError(f"{host!r} is not a host name under {domain}")
    if name == return_path_domain(domain) or name in taken:
        raise DomainError(f"{name} already has other DNS records of this domain (MX)")
    return name
