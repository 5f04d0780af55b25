"""The address policy (netpolicy.py), as webhooks and delivery both apply it.

One table of addresses, each with what the policy must say (refused, and the
reason it names, or public). Every case is checked three ways: the literal
address itself; a webhook URL on a name whose A/AAAA record is that address
(FakeDNS), as checked at creation and again at send time; and a recipient
domain whose MX host has that address, as the delivery router filters it.
Nothing here connects anywhere: the public addresses are only judged.
"""

from __future__ import annotations

import ipaddress

import pytest

from postline.delivery.routing import RouteError, Router
from postline.events.ssrf import UnsafeURL, checked_addresses
from postline.model import BounceType
from postline.netpolicy import embedded_ipv4, is_public, refusal
from tests.harness import FakeDNS

#: (address, a fragment of the refusal reason; None: public, allowed).
CASES: list[tuple[str, str | None]] = [
    # IPv4 special-purpose ranges
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("10.1.2.3", "private (10.0.0.0/8)"),
    ("172.16.0.1", "private (172.16.0.0/12)"),
    ("172.31.255.255", "private (172.16.0.0/12)"),
    ("192.168.1.1", "private (192.168.0.0/16)"),
    ("169.254.169.254", "link-local"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("100.127.255.254", "carrier-grade NAT"),
    ("0.0.0.0", "'this network'"),
    ("0.1.2.3", "'this network'"),
    ("192.0.0.8", "IETF protocol assignments"),
    ("192.0.2.10", "documentation"),
    ("198.51.100.7", "documentation"),
    ("203.0.113.9", "documentation"),
    ("198.18.0.1", "benchmarking"),
    ("198.19.255.255", "benchmarking"),
    ("192.88.99.1", "6to4 relay anycast"),
    ("224.0.0.251", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "broadcast"),
    # IPv4 public, just outside the ranges above
    ("8.8.8.8", None),
    ("100.63.255.255", None),
    ("100.128.0.1", None),
    ("172.32.0.1", None),
    ("198.20.0.1", None),
    ("93.184.216.34", None),
    # IPv6 special-purpose ranges
    ("::", "unspecified"),
    ("::1", "loopback (::1)"),
    ("fc00::1", "unique local"),
    ("fd12:3456:789a::1", "unique local"),
    ("fe80::1", "link-local (fe80::/10)"),
    ("fec0::1", "site-local"),
    ("ff02::1", "multicast"),
    ("ff0e::1", "multicast"),
    ("2001:db8::1", "documentation (2001:db8::/32)"),
    ("3fff::1", "documentation (3fff::/20)"),
    ("100::1", "discard-only"),
    ("2001:2::1", "IETF protocol assignments"),
    ("4000::1", "outside global unicast"),
    ("5f00::1", "segment routing"),
    # IPv6 transition forms carrying a refused IPv4 address
    ("::ffff:127.0.0.1", "IPv4-mapped form of 127.0.0.1, loopback"),
    ("::ffff:10.0.0.1", "IPv4-mapped form of 10.0.0.1, private"),
    ("::127.0.0.1", "IPv4-compatible form of 127.0.0.1, loopback"),
    ("::169.254.169.254", "IPv4-compatible form of 169.254.169.254, link-local"),
    ("::ffff:0:127.0.0.1", "IPv4-translated form of 127.0.0.1, loopback"),
    ("64:ff9b::a9fe:a9fe", "NAT64 form of 169.254.169.254, link-local"),
    ("64:ff9b::7f00:1", "NAT64 form of 127.0.0.1, loopback"),
    ("64:ff9b::c0a8:101", "NAT64 form of 192.168.1.1, private"),
    ("64:ff9b:1::a9fe:a9fe", "NAT64 local-use form of 169.254.169.254"),
    ("2002:a9fe:a9fe::", "6to4 form of 169.254.169.254, link-local"),
    ("2002:7f00:1::1", "6to4 form of 127.0.0.1, loopback"),
    ("2002:6440:1::1", "6to4 form of 100.64.0.1, carrier-grade NAT"),
    # Teredo: server in bits 32-63, client in the last 32 bits, inverted
    ("2001:0:7f00:1::f7f7:f7f7", "Teredo server form of 127.0.0.1"),
    ("2001:0:808:808::80ff:fffe", "Teredo client form of 127.0.0.1"),
    ("2001:0:808:808::7f7f:7f7f", "Teredo (2001::/32)"),
    # Transition forms of public IPv4 addresses: refused when the form itself is
    ("::8.8.8.8", "deprecated IPv4-compatible form"),
    ("::ffff:0:8.8.8.8", "IPv4-translated form (::ffff:0:0:0/96)"),
    ("64:ff9b:1::808:808", "NAT64 local-use prefix"),
    # ... and allowed when a translator or tunnel would reach the public address
    ("::ffff:8.8.8.8", None),
    ("64:ff9b::808:808", None),
    ("2002:808:808::1", None),
    # IPv6 public
    ("2606:4700:4700::1111", None),
    ("2a00:1450:4001:80b::200e", None),
]

IDS = [address for address, _ in CASES]


def test_the_table_is_large_enough() -> None:
    assert len(CASES) >= 40
    assert len(set(IDS)) == len(IDS)


@pytest.mark.parametrize(("address", "reason"), CASES, ids=IDS)
def test_literal_address(address: str, reason: str | None) -> None:
    said = refusal(address)
    if reason is None:
        assert said is None and is_public(address)
    else:
        assert said is not None and reason in said, said
        assert not is_public(address)


def test_teredo_client_is_stored_inverted() -> None:
    """RFC 4380 4: the client's IPv4 address is the last 32 bits XOR 0xffffffff."""
    forms = embedded_ipv4(ipaddress.IPv6Address("2001:0:4136:e378:8000:63bf:3fff:fdd2"))
    assert [(form, str(ip)) for form, ip in forms] == [
        ("Teredo server", "65.54.227.120"),
        ("Teredo client", "192.0.2.45"),
    ]


def _publish(fake_dns: FakeDNS, name: str, address: str) -> None:
    if ":" in address:
        fake_dns.add_aaaa(name, ipaddress.IPv6Address(address).exploded)  # dnslib: hex only
    else:
        fake_dns.add_a(name, address)


def _same(found: list[str] | tuple[str, ...] | None, address: str) -> bool:
    """One address, the one published (DNS may write an IPv6 address another way)."""
    return found is not None and list(map(ipaddress.ip_address, found)) == [
        ipaddress.ip_address(address)
    ]


def _router(fake_dns: FakeDNS, *, allow_private: bool = False) -> Router:
    host, port = fake_dns.nameserver.rsplit(":", 1)
    return Router(nameservers=[(host, int(port))], delivery_port=25, allow_private=allow_private)


@pytest.mark.parametrize(("address", "reason"), CASES, ids=IDS)
async def test_webhook_host_resolving_to(
    fake_dns: FakeDNS, address: str, reason: str | None
) -> None:
    _publish(fake_dns, "hook.policy.test", address)
    resolver = _router(fake_dns).resolver
    url = "https://hook.policy.test/events"
    if reason is None:
        assert _same(await checked_addresses(url, resolver, allow_private=False), address)
    else:
        with pytest.raises(UnsafeURL) as refused:
            await checked_addresses(url, resolver, allow_private=False)
        assert reason in str(refused.value)
        assert "POSTLINE_WEBHOOK_ALLOW_PRIVATE" in str(refused.value)
    # The lab switch lets every case through.
    assert _same(await checked_addresses(url, resolver, allow_private=True), address)


@pytest.mark.parametrize(("address", "reason"), CASES, ids=IDS)
async def test_mx_host_resolving_to(fake_dns: FakeDNS, address: str, reason: str | None) -> None:
    fake_dns.add_mx("policy.test", (10, "mx.policy.test"))
    _publish(fake_dns, "mx.policy.test", address)
    if reason is None:
        (target,) = await _router(fake_dns).route("policy.test")
        assert target.mx == "mx.policy.test" and _same(target.addresses, address)
    else:
        with pytest.raises(RouteError) as refused:
            await _router(fake_dns).route("policy.test")
        error = refused.value
        assert error.permanent and error.rule == "dns.private_address"
        assert (error.enhanced_code, error.bounce_type) == ("5.4.4", BounceType.BLOCK)
        assert "MX mx.policy.test resolves only to non-public addresses" in str(error)
        assert reason in str(error)
    # Private delivery allowed: the MX is kept, resolved when connecting.
    (target,) = await _router(fake_dns, allow_private=True).route("policy.test")
    assert target.host == "mx.policy.test" and target.addresses is None


async def test_webhook_literal_transition_forms_are_refused(fake_dns: FakeDNS) -> None:
    resolver = _router(fake_dns).resolver
    for url in (
        "http://[64:ff9b::a9fe:a9fe]/",
        "http://[::127.0.0.1]/",
        "http://[::ffff:0:127.0.0.1]/",
        "http://[2002:a9fe:a9fe::]/",
        "http://[fec0::1]/",
    ):
        with pytest.raises(UnsafeURL):
            await checked_addresses(url, resolver, allow_private=False)


async def test_mixed_mx_hosts_keep_only_their_public_addresses(fake_dns: FakeDNS) -> None:
    fake_dns.add_mx(
        "mixed.test", (5, "inside.mixed.test"), (10, "both.mixed.test"), (20, "out.mixed.test")
    )
    fake_dns.add_a("inside.mixed.test", "10.0.0.5")
    fake_dns.add_aaaa("inside.mixed.test", "64:ff9b::a00:5")
    fake_dns.add_a("both.mixed.test", "127.0.0.1", "93.184.216.34")
    fake_dns.add_aaaa("both.mixed.test", "::ffff:a9fe:a9fe", "2606:4700:4700::1111")
    fake_dns.add_a("out.mixed.test", "8.8.8.8")
    targets = await _router(fake_dns).route("mixed.test")
    assert [(t.mx, t.addresses) for t in targets] == [
        ("both.mixed.test", ("93.184.216.34", "2606:4700:4700::1111")),
        ("out.mixed.test", ("8.8.8.8",)),
    ]


async def test_every_mx_private_names_them_all(fake_dns: FakeDNS) -> None:
    fake_dns.add_mx("inner.test", (10, "a.inner.test"), (20, "b.inner.test"))
    fake_dns.add_a("a.inner.test", "127.0.0.1")
    fake_dns.add_aaaa("b.inner.test", "fd00::25")
    with pytest.raises(RouteError) as refused:
        await _router(fake_dns).route("inner.test")
    text = str(refused.value)
    assert text.startswith("MX a.inner.test, b.inner.test resolve only to non-public addresses")
    assert "127.0.0.1: loopback" in text and "fd00::25: unique local" in text


async def test_an_mx_without_addresses_is_a_deferral_not_a_policy_bounce(
    fake_dns: FakeDNS,
) -> None:
    """One MX private, one that does not resolve right now: nothing is refused for good."""
    fake_dns.add_mx("half.test", (10, "a.half.test"), (20, "b.half.test"))
    fake_dns.add_a("a.half.test", "10.0.0.1")
    fake_dns.servfail("b.half.test")
    targets = await _router(fake_dns).route("half.test")
    assert [(t.mx, t.addresses) for t in targets] == [("b.half.test", ())]


async def test_implicit_mx_is_filtered_too(fake_dns: FakeDNS) -> None:
    """No MX record: the domain's own address is the MX (RFC 5321 5.1), and it is judged."""
    fake_dns.add_aaaa("bare.test", "64:ff9b::7f00:1")
    with pytest.raises(RouteError, match=r"NAT64 form of 127\.0\.0\.1"):
        await _router(fake_dns).route("bare.test")


async def test_operator_routes_are_not_filtered(fake_dns: FakeDNS) -> None:
    """The relay host and static routes (the sandbox simulator) are the operator's choice."""
    host, port = fake_dns.nameserver.rsplit(":", 1)
    relayed = Router(nameservers=[(host, int(port))], delivery_port=25, relay=("127.0.0.1", 2525))
    assert [(t.host, t.port, t.addresses) for t in await relayed.route("any.test")] == [
        ("127.0.0.1", 2525, None)
    ]
    static = _router(fake_dns)
    static.static["simulator.postline.test"] = ("127.0.0.1", 4025)
    assert [(t.host, t.addresses) for t in await static.route("simulator.postline.test")] == [
        ("127.0.0.1", None)
    ]


async def test_a_bounce_names_only_a_few_of_many_refused_addresses(fake_dns: FakeDNS) -> None:
    fake_dns.add_mx("many.test", *((10, f"mx{i}.many.test") for i in range(6)))
    for i in range(6):
        fake_dns.add_a(f"mx{i}.many.test", *(f"10.0.{i}.{j}" for j in range(1, 4)))
    with pytest.raises(RouteError) as refused:
        await _router(fake_dns).route("many.test")
    text = str(refused.value)
    assert ", and 2 more resolve only to non-public addresses" in text, text
    assert "; and 14 more)" in text, text
    assert text.count(": private (10.0.0.0/8)") == 4, text


async def test_an_mx_named_by_an_address_literal_is_judged_too(fake_dns: FakeDNS) -> None:
    """Some zones write an address as the MX "name": it is connected to as is, so judged."""
    fake_dns.add_mx("literal.test", (10, "127.0.0.1"))
    with pytest.raises(RouteError, match=r"MX 127\.0\.0\.1 resolves only .*127\.0\.0\.1: loopback"):
        await _router(fake_dns).route("literal.test")
