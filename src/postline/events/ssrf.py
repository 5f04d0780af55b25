"""Webhook URLs must not reach into the operator's own network.

Which addresses are public is decided by :mod:`postline.netpolicy`, the policy
mail delivery uses too.

A URL is checked when it is saved and again before each delivery, with an
answer no older than its DNS TTL (DNS rebinding: a name that moves to a private
address is refused once the old answer expires); the delivery then connects to
the address that passed the check, not to whatever the name resolves to later.
:class:`Targets` keeps those checked answers, so a busy endpoint costs one look-up
per TTL instead of one per delivery.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import dns.asyncresolver
import dns.exception
import dns.resolver
import httpx

from postline.netpolicy import refusal

#: The longest a checked answer is used, whatever its TTL says.
MAX_TARGET_SECONDS = 300.0
#: Endpoints whose checked answers are kept (then the oldest go first).
MAX_TARGETS = 1024


class UnsafeURL(ValueError):
    """A webhook URL Postline refuses to call; the message says why."""


def split_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL, or UnsafeURL."""
    if any(ord(c) < 33 for c in url):
        raise UnsafeURL("the URL must not contain spaces or control characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise UnsafeURL("the URL must start with http:// or https://")
    if not parts.hostname:
        raise UnsafeURL("the URL has no host")
    if parts.username or parts.password:
        raise UnsafeURL("the URL must not contain credentials")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise UnsafeURL("the URL has an invalid port") from None
    return parts.scheme, parts.hostname.lower(), port


async def resolve(resolver: dns.asyncresolver.Resolver, host: str) -> tuple[list[str], float]:
    """The host's addresses and how many seconds the answer may be used (its TTL)."""
    try:
        return [str(ipaddress.ip_address(host.strip("[]")))], MAX_TARGET_SECONDS
    except ValueError:
        pass
    if host == "localhost" or host.endswith(".localhost"):
        return ["127.0.0.1"], MAX_TARGET_SECONDS  # RFC 6761: always loopback, whatever DNS says
    found: list[str] = []
    ttl = MAX_TARGET_SECONDS
    for rdtype in ("A", "AAAA"):
        try:
            answer = await resolver.resolve(host, rdtype)
        except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
            continue
        except (dns.resolver.NoNameservers, dns.exception.Timeout) as exc:
            raise UnsafeURL(f"{host} could not be resolved right now ({exc})") from None
        found.extend(r.to_text() for r in answer)
        if answer.rrset is not None:
            ttl = min(ttl, float(answer.rrset.ttl))
    if not found:
        raise UnsafeURL(f"{host} does not resolve")
    return found, ttl


def _refuse_private(host: str, addresses: list[str]) -> None:
    for address in addresses:
        reason = refusal(address)
        if reason is not None:
            raise UnsafeURL(
                f"{host} resolves to {address}, not a public address: {reason} "
                "(set POSTLINE_WEBHOOK_ALLOW_PRIVATE=true to allow)"
            )


async def checked_addresses(
    url: str, resolver: dns.asyncresolver.Resolver, *, allow_private: bool
) -> list[str]:
    """The addresses the URL may be called at; UnsafeURL if any of them is not public."""
    _, host, _ = split_url(url)
    addresses, _ = await resolve(resolver, host)
    if not allow_private:
        _refuse_private(host, addresses)
    return addresses


@dataclass(frozen=True, slots=True)
class Target:
    """Where a delivery to one URL goes: the URL with its host replaced by the checked
    address (no second look-up to rebind), and the names the request still carries."""

    url: httpx.URL
    host_header: str
    sni_hostname: str | None  # https: the endpoint's name, for TLS SNI and the certificate
    expires: float  # on the Targets clock


class Targets:
    """Checked targets per webhook URL, each used until its DNS answer's TTL runs out.

    Only checked answers are kept: a refusal or a failed look-up is asked again at the
    next delivery. What is kept is what was checked, so the address a delivery
    connects to has always passed :func:`postline.netpolicy.refusal`.
    """

    def __init__(
        self,
        resolver: dns.asyncresolver.Resolver,
        *,
        allow_private: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.resolver = resolver
        self.allow_private = allow_private
        self.clock = clock
        self._known: dict[str, Target] = {}

    async def get(self, url: str) -> Target:
        """The checked target of ``url``; UnsafeURL if it may not be called."""
        now = self.clock()
        known = self._known.get(url)
        if known is not None and known.expires > now:
            return known
        scheme, host, port = split_url(url)
        addresses, ttl = await resolve(self.resolver, host)
        if not self.allow_private:
            _refuse_private(host, addresses)
        target = Target(
            url=httpx.URL(url).copy_with(host=addresses[0]),
            host_header=host if port in (80, 443) else f"{host}:{port}",
            sni_hostname=host if scheme == "https" else None,
            expires=now + ttl,
        )
        self._known.pop(url, None)
        if len(self._known) >= MAX_TARGETS:
            del self._known[next(iter(self._known))]
        if ttl > 0:
            self._known[url] = target
        return target
