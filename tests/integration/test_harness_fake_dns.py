"""Self-tests of FakeDNS, driven by a real resolver (dnspython)."""

from __future__ import annotations

import dns.asyncquery
import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.resolver
import pytest

from tests.harness import FakeDNS


def resolver_for(fake_dns: FakeDNS, lifetime: float = 2.0) -> dns.asyncresolver.Resolver:
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [fake_dns.host]
    resolver.port = fake_dns.port
    resolver.lifetime = lifetime
    resolver.timeout = lifetime
    return resolver


def test_nameserver_format(fake_dns: FakeDNS) -> None:
    assert fake_dns.port != 0
    assert fake_dns.nameserver == f"127.0.0.1:{fake_dns.port}"


async def test_mx_answer_case_insensitive(fake_dns: FakeDNS) -> None:
    fake_dns.add_mx("Example.TEST.", (20, "mx2.example.test"), (10, "mx1.example.test."))
    answer = await resolver_for(fake_dns).resolve("example.test", "MX")
    records = sorted((r.preference, r.exchange.to_text()) for r in answer)
    assert records == [(10, "mx1.example.test."), (20, "mx2.example.test.")]
    assert answer.rrset is not None
    assert answer.rrset.ttl == 60

    answer = await resolver_for(fake_dns).resolve("EXAMPLE.test.", "MX")
    assert len(answer) == 2
    assert fake_dns.queries == [("example.test", "MX"), ("example.test", "MX")]


async def test_a_aaaa_txt_and_ttl(fake_dns: FakeDNS) -> None:
    fake_dns.add_a("mx1.example.test", "127.0.0.2", "127.0.0.3")
    fake_dns.add_aaaa("mx1.example.test", "::1")
    fake_dns.add_txt("example.test", "v=spf1 -all", ttl=300)
    fake_dns.add_txt("example.test", "another")
    resolver = resolver_for(fake_dns)

    a = await resolver.resolve("mx1.example.test", "A")
    assert sorted(r.address for r in a) == ["127.0.0.2", "127.0.0.3"]
    aaaa = await resolver.resolve("mx1.example.test", "AAAA")
    assert [r.address for r in aaaa] == ["::1"]
    txt = await resolver.resolve("example.test", "TXT")
    assert sorted(b"".join(r.strings) for r in txt) == [b"another", b"v=spf1 -all"]
    assert txt.rrset is not None
    assert txt.rrset.ttl == 60  # an RRset has one TTL; dnspython keeps the smallest


async def test_long_txt_is_split_and_truncation_falls_back_to_tcp(fake_dns: FakeDNS) -> None:
    key = "v=DKIM1; k=rsa; p=" + "A" * 700
    fake_dns.add_txt("sel._domainkey.example.test", key, key.replace("A", "B"))
    answer = await resolver_for(fake_dns).resolve("sel._domainkey.example.test", "TXT")
    values = sorted(b"".join(r.strings).decode() for r in answer)
    assert values == sorted([key, key.replace("A", "B")])
    assert all(max(len(s) for s in r.strings) == 255 for r in answer)
    # > 512 bytes without EDNS: truncated over UDP, retried over TCP
    assert fake_dns.queries_for("sel._domainkey.example.test") == [
        ("sel._domainkey.example.test", "TXT"),
        ("sel._domainkey.example.test", "TXT"),
    ]


async def test_tcp_query(fake_dns: FakeDNS) -> None:
    fake_dns.add_a("tcp.example.test", "192.0.2.1")
    query = dns.message.make_query("tcp.example.test", "A")
    response = await dns.asyncquery.tcp(query, fake_dns.host, port=fake_dns.port, timeout=2.0)
    assert [r.address for r in response.answer[0]] == ["192.0.2.1"]


async def test_nodata_and_nxdomain(fake_dns: FakeDNS) -> None:
    fake_dns.add_a("only-a.example.test", "192.0.2.1")
    resolver = resolver_for(fake_dns)
    with pytest.raises(dns.resolver.NoAnswer):
        await resolver.resolve("only-a.example.test", "MX")
    with pytest.raises(dns.resolver.NXDOMAIN):
        await resolver.resolve("missing.example.test", "MX")


async def test_null_mx(fake_dns: FakeDNS) -> None:
    fake_dns.null_mx("nomail.example.test")
    answer = await resolver_for(fake_dns).resolve("nomail.example.test", "MX")
    (record,) = list(answer)
    assert record.preference == 0
    assert record.exchange == dns.name.root


async def test_cname_is_chased(fake_dns: FakeDNS) -> None:
    fake_dns.add_cname("alias.example.test", "real.example.test")
    fake_dns.add_a("real.example.test", "192.0.2.7")
    answer = await resolver_for(fake_dns).resolve("alias.example.test", "A")
    assert answer.canonical_name == dns.name.from_text("real.example.test")
    assert [r.address for r in answer] == ["192.0.2.7"]


async def test_servfail(fake_dns: FakeDNS) -> None:
    fake_dns.add_mx("broken.example.test", (10, "mx.broken.example.test"))
    fake_dns.servfail("Broken.Example.Test")
    with pytest.raises(dns.resolver.NoNameservers):
        await resolver_for(fake_dns).resolve("broken.example.test", "MX")


async def test_timeout(fake_dns: FakeDNS) -> None:
    fake_dns.timeout("slow.example.test")
    with pytest.raises(dns.resolver.LifetimeTimeout):  # no answer, ever: only the lifetime ends it
        await resolver_for(fake_dns, lifetime=0.5).resolve("slow.example.test", "A")
    assert ("slow.example.test", "A") in fake_dns.queries

    query = dns.message.make_query("slow.example.test", "A")
    with pytest.raises(dns.exception.Timeout):
        await dns.asyncquery.tcp(query, fake_dns.host, port=fake_dns.port, timeout=0.5)


async def test_remove_and_clear(fake_dns: FakeDNS) -> None:
    fake_dns.add_a("gone.example.test", "192.0.2.1")
    fake_dns.timeout("also-gone.example.test")
    fake_dns.remove("GONE.example.test.")
    fake_dns.remove("also-gone.example.test")
    resolver = resolver_for(fake_dns)
    with pytest.raises(dns.resolver.NXDOMAIN):
        await resolver.resolve("gone.example.test", "A")
    with pytest.raises(dns.resolver.NXDOMAIN):
        await resolver.resolve("also-gone.example.test", "A")

    fake_dns.add_a("kept.example.test", "192.0.2.1")
    fake_dns.clear()
    with pytest.raises(dns.resolver.NXDOMAIN):
        await resolver.resolve("kept.example.test", "A")


async def test_context_manager_explicit_port_and_fast_stop() -> None:
    with FakeDNS() as first:
        port = first.port
        first.add_a("x.test", "192.0.2.9")
        answer = await resolver_for(first).resolve("x.test", "A")
        assert [r.address for r in answer] == ["192.0.2.9"]

    # Stopped (the test's timeout catches a stop that hangs): the port is released on
    # stop and can be bound again explicitly.
    with FakeDNS("127.0.0.1", port) as second:
        assert second.port == port
        second.add_aaaa("x.test", "2001:db8::1")
        answer = await resolver_for(second).resolve("x.test", "AAAA")
        assert [r.address for r in answer] == ["2001:db8::1"]


def test_add_requires_records() -> None:
    with pytest.raises(ValueError, match="at least one record"):
        FakeDNS().add_a("x.test")
