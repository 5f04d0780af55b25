"""Which IP addresses Postline may connect to on a tenant's say-so: public ones only.

Webhook URLs and recipient domains' MX records are chosen by tenants (they
control the URL, or the domain's DNS). Without this check a tenant could make
Postline talk to the operator's own network — an internal relay on
127.0.0.1:25, a cloud metadata service on 169.254.169.254 — and read the
answers in a delivery log or a timeline. Webhooks (events/ssrf.py) and mail
delivery (delivery/routing.py) ask the same question here.

``ipaddress.is_global`` alone is not enough: IPv6 has forms that carry an IPv4
address inside (``::ffff:127.0.0.1``, NAT64 ``64:ff9b::a9fe:a9fe``, 6to4
``2002:a9fe:a9fe::``, Teredo ...), and a translator on the path turns them
back into the private IPv4 address. So every embedded IPv4 address is taken
out and judged first; then the tables of special-purpose ranges (IANA's
registries, RFC 6890) decide; then anything outside IPv6 global unicast
(2000::/3) is refused; ``is_global`` is the last safety net.
"""

from __future__ import annotations

import functools
import ipaddress
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

IPAddress = IPv4Address | IPv6Address

_V4 = IPv4Network
_V6 = IPv6Network

#: IPv4 special-purpose ranges, most specific first (the first match names the reason).
IPV4_REFUSED: tuple[tuple[IPv4Network, str], ...] = (
    (_V4("0.0.0.0/8"), "'this network' (0.0.0.0/8)"),
    (_V4("10.0.0.0/8"), "private (10.0.0.0/8)"),
    (_V4("100.64.0.0/10"), "carrier-grade NAT (100.64.0.0/10)"),
    (_V4("127.0.0.0/8"), "loopback (127.0.0.0/8)"),
    (_V4("169.254.0.0/16"), "link-local (169.254.0.0/16)"),
    (_V4("172.16.0.0/12"), "private (172.16.0.0/12)"),
    (_V4("192.0.0.0/24"), "IETF protocol assignments (192.0.0.0/24)"),
    (_V4("192.0.2.0/24"), "documentation (192.0.2.0/24)"),
    (_V4("192.88.99.0/24"), "deprecated 6to4 relay anycast (192.88.99.0/24)"),
    (_V4("192.168.0.0/16"), "private (192.168.0.0/16)"),
    (_V4("198.18.0.0/15"), "benchmarking (198.18.0.0/15)"),
    (_V4("198.51.100.0/24"), "documentation (198.51.100.0/24)"),
    (_V4("203.0.113.0/24"), "documentation (203.0.113.0/24)"),
    (_V4("224.0.0.0/4"), "multicast (224.0.0.0/4)"),
    (_V4("255.255.255.255/32"), "broadcast (255.255.255.255)"),
    (_V4("240.0.0.0/4"), "reserved (240.0.0.0/4)"),
)

#: IPv6 special-purpose ranges judged after any embedded IPv4 address, most specific first.
IPV6_REFUSED: tuple[tuple[IPv6Network, str], ...] = (
    (_V6("::/128"), "unspecified (::)"),
    (_V6("::1/128"), "loopback (::1)"),
    (_V6("::ffff:0:0:0/96"), "IPv4-translated form (::ffff:0:0:0/96)"),
    (_V6("::/96"), "deprecated IPv4-compatible form (::/96)"),
    (_V6("64:ff9b:1::/48"), "NAT64 local-use prefix (64:ff9b:1::/48), translated on site"),
    (_V6("100::/64"), "discard-only (100::/64)"),
    (_V6("2001::/32"), "Teredo (2001::/32)"),
    (_V6("2001:db8::/32"), "documentation (2001:db8::/32)"),
    (_V6("2001::/23"), "IETF protocol assignments (2001::/23)"),
    (_V6("3fff::/20"), "documentation (3fff::/20)"),
    (_V6("5f00::/16"), "segment routing SIDs (5f00::/16)"),
    (_V6("fc00::/7"), "unique local, private (fc00::/7)"),
    (_V6("fe80::/10"), "link-local (fe80::/10)"),
    (_V6("fec0::/10"), "site-local (fec0::/10)"),
    (_V6("ff00::/8"), "multicast (ff00::/8)"),
)

_GLOBAL_UNICAST = _V6("2000::/3")
_MAPPED = _V6("::ffff:0:0/96")
_TRANSLATED = _V6("::ffff:0:0:0/96")
_COMPATIBLE = _V6("::/96")
_NAT64 = _V6("64:ff9b::/96")
_NAT64_LOCAL = _V6("64:ff9b:1::/48")
_SIX_TO_FOUR = _V6("2002::/16")
_TEREDO = _V6("2001::/32")


def embedded_ipv4(ip: IPv6Address) -> list[tuple[str, IPv4Address]]:
    """Every IPv4 address the IPv6 address carries, with the name of the form.

    A translator or tunnel on the path would deliver the packet to these, so
    they are judged as if they had been asked for directly.
    """
    low32 = IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _MAPPED:
        return [("IPv4-mapped", low32)]
    if ip in _TRANSLATED:
        return [("IPv4-translated", low32)]
    if ip in _COMPATIBLE:
        return [("IPv4-compatible", low32)]
    if ip in _NAT64:
        return [("NAT64", low32)]
    if ip in _NAT64_LOCAL:
        return [("NAT64 local-use", low32)]  # RFC 6052 /96 position, the usual one
    if ip in _SIX_TO_FOUR:
        return [("6to4", IPv4Address((int(ip) >> 80) & 0xFFFFFFFF))]
    if ip in _TEREDO:
        server = IPv4Address((int(ip) >> 64) & 0xFFFFFFFF)
        client = IPv4Address(~int(ip) & 0xFFFFFFFF)  # RFC 4380 4: stored inverted
        return [("Teredo server", server), ("Teredo client", client)]
    return []


@functools.lru_cache(maxsize=4096)
def is_address(text: str) -> bool:
    """Whether ``text`` is an IP address rather than a host name.

    Remembered per text: the engine asks for every delivery (its MX host), and
    ``ip_address`` only says no by raising, which was 3.6% of the delivery process.
    """
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def refusal(address: str | IPAddress) -> str | None:
    """Why Postline must not connect to ``address`` (e.g. "loopback (127.0.0.0/8)"),
    or None when it is a public address. ValueError when it is not an address."""
    ip = address if not isinstance(address, str) else ipaddress.ip_address(address.strip("[]"))
    if isinstance(ip, IPv4Address):
        return _ipv4_refusal(ip)
    return _ipv6_refusal(ip)


def is_public(address: str | IPAddress) -> bool:
    """Whether Postline may connect to ``address`` for a tenant."""
    return refusal(address) is None


def describe(address: str) -> str:
    """``address`` with the reason it is refused, for messages: "10.0.0.1: private (10.0.0.0/8)"."""
    reason = refusal(address)
    return address if reason is None else f"{address}: {reason}"


def _ipv4_refusal(ip: IPv4Address) -> str | None:
    for network, reason in IPV4_REFUSED:
        if ip in network:
            return reason
    if not ip.is_global:
        return "not globally reachable"
    return None


def _ipv6_refusal(ip: IPv6Address) -> str | None:
    if ip in _V6("::/127"):  # :: and ::1 carry no IPv4 address worth naming
        return _ipv6_table(ip)
    for form, inner in embedded_ipv4(ip):
        reason = _ipv4_refusal(inner)
        if reason is not None:
            return f"{form} form of {inner}, {reason}"
    if ip in _MAPPED or ip in _NAT64:
        return None  # the public IPv4 address inside is what is reached
    reason = _ipv6_table(ip)
    if reason is not None:
        return reason
    if ip not in _GLOBAL_UNICAST:
        return "reserved, outside global unicast (2000::/3)"
    if not ip.is_global:
        return "not globally reachable"
    if ip.scope_id:
        return "scoped to a local interface"
    return None


def _ipv6_table(ip: IPv6Address) -> str | None:
    for network, reason in IPV6_REFUSED:
        if ip in network:
            return reason
    return None
