"""Webhook URLs must not reach into the operator's own network.

Which addresses are public is decided by :mod:`postline.netpolicy`, the policy
mail delivery uses too.

A URL is checked when it is saved and again, by resolving it anew, right
before each delivery (DNS rebinding); the delivery then connects to the
address that passed the check, not to whatever the name resolves to later.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

import dns.asyncresolver
import dns.exception
import dns.resolver

from postline.netpolicy import refusal


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


async def resolve(resolver: dns.asyncresolver.Resolver, host: str) -> list[str]:
    try:
        return [str(ipaddress.ip_address(host.strip("[]")))]
    except ValueError:
        pass
    if host == "localhost" or host.endswith(".localhost"):
        return ["127.0.0.1"]  # RFC 6761: always loopback, whatever DNS says
    found: list[str] = []
    for rdtype in ("A", "AAAA"):
        try:
            answer = await resolver.resolve(host, rdtype)
        except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
            continue
        except (dns.resolver.NoNameservers, dns.exception.Timeout) as exc:
            raise UnsafeURL(f"{host} could not be resolved right now ({exc})") from None
        found.extend(r.to_text() for r in answer)
    if not found:
        raise UnsafeURL(f"{host} does not resolve")
    return found


async def checked_addresses(
    url: str, resolver: dns.asyncresolver.Resolver, *, allow_private: bool
) -> list[str]:
    """The addresses the URL may be called at; UnsafeURL if any of them is not public."""
    _, host, _ = split_url(url)
    addresses = await resolve(resolver, host)
    if not allow_private:
        for address in addresses:
            reason = refusal(address)
            if reason is not None:
                raise UnsafeURL(
                    f"{host} resolves to {address}, not a public address: {reason} "
                    "(set POSTLINE_WEBHOOK_ALLOW_PRIVATE=true to allow)"
                )
    return addresses
