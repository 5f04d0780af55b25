"""DANE (RFC 7672) end to end with POSTLINE_DNSSEC=trust-local.

The fake DNS on loopback plays the operator's validating resolver: names in a
``sign``-ed zone are answered with the AD bit. The MX is an aiosmtpd server on
127.0.0.8 with STARTTLS and a certificate from a throwaway CA; the TLSA records
are computed from that certificate in the test.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from postline.config import ConfigError, load_settings
from tests.harness import FakeDNS, FakeMX
from tests.harness.policy_server import PolicyServer
from tests.harness.postline import Factory, PostlineUnderTest
from tests.harness.timeline import deferred, last_row
from tests.harness.tls import ThrowawayCA

DOMAIN = "dane.test"
MX_NAME = "mx.dane.test"
TLSA_NAME = f"_25._tcp.{MX_NAME}"


@dataclass
class DaneWorld:
    ca: ThrowawayCA
    dns: FakeDNS
    mx: FakeMX
    factory: Factory

    @property
    def leaf(self) -> x509.Certificate:
        return self.ca.server_certificate(MX_NAME)

    async def postline(self, **overrides: Any) -> PostlineUnderTest:
        return await self.factory(dnssec="trust-local", **overrides)


@pytest_asyncio.fixture
async def world(
    postline_factory: Factory, fake_dns: FakeDNS, fake_mx: FakeMX, tmp_path: Path
) -> AsyncIterator[DaneWorld]:
    ca = ThrowawayCA.create(tmp_path)
    mx = await ca.start_mx("127.0.0.8", fake_mx.port, MX_NAME)
    fake_dns.add_mx(DOMAIN, (10, MX_NAME))
    fake_dns.add_a(MX_NAME, "127.0.0.8")
    fake_dns.sign(DOMAIN)
    yield DaneWorld(ca, fake_dns, mx, postline_factory)
    await mx.stop()


async def test_a_matching_dane_ee_record_delivers_without_trusting_any_ca(
    world: DaneWorld,
) -> None:
    world.dns.add_tlsa(TLSA_NAME, 3, 1, 1, world.ca.spki_sha256(MX_NAME))
    pl = await world.postline()  # no POSTLINE_TLS_CA_FILE: WebPKI would refuse this MX
    sent = await pl.send(to=f"user@{DOMAIN}")
    detail = await pl.wait_for_status(sent["id"], ["delivered"])
    row = last_row(detail)
    assert (row["tls_policy"], row["tls_verified"]) == ("dane", True)
    assert [m.tls for m in world.mx.received] == [True]


async def test_a_matching_dane_ta_record_delivers(world: DaneWorld) -> None:
    ca_digest = hashlib.sha512(world.ca.certificate.public_bytes(Encoding.DER)).digest()
    world.dns.add_tlsa(TLSA_NAME, 2, 0, 2, ca_digest)
    pl = await world.postline()
    sent = await pl.send(to=f"user@{DOMAIN}")
    detail = await pl.wait_for_status(sent["id"], ["delivered"])
    assert last_row(detail)["tls_policy"] == "dane"


async def test_a_tlsa_record_that_does_not_match_the_certificate_defers(world: DaneWorld) -> None:
    world.dns.add_tlsa(TLSA_NAME, 3, 1, 1, b"\x00" * 32)
    pl = await world.postline()
    sent = await pl.send(to=f"user@{DOMAIN}")
    detail = await deferred(pl, sent["id"])
    assert "matches none of its TLSA records" in detail["recipients"][0]["response"]
    assert last_row(detail)["tls_policy"] == "dane"
    assert world.mx.received == []


async def test_a_failing_tlsa_lookup_in_a_signed_zone_defers(world: DaneWorld) -> None:
    world.dns.servfail(TLSA_NAME)
    pl = await world.postline()
    sent = await pl.send(to=f"user@{DOMAIN}")
    detail = await deferred(pl, sent["id"])
    response = detail["recipients"][0]["response"]
    assert f"TLSA lookup for {TLSA_NAME} failed" in response
    assert last_row(detail)["tls_policy"] == "dane"
    assert world.mx.connections == 0


async def test_tlsa_in_an_unsigned_zone_is_not_believed(
    postline_factory: Factory, fake_dns: FakeDNS, world: DaneWorld
) -> None:
    fake_dns.add_mx("plain.test", (10, "mx.plain.test"))
    fake_dns.add_a("mx.plain.test", "127.0.0.8")
    fake_dns.add_tlsa("_25._tcp.mx.plain.test", 3, 1, 1, b"\x00" * 32)
    pl = await world.postline()
    sent = await pl.send(to="user@plain.test")
    detail = await pl.wait_for_status(sent["id"], ["delivered"])
    assert last_row(detail)["tls_policy"] == "opportunistic"


async def test_dane_takes_precedence_over_mta_sts(world: DaneWorld, tmp_path: Path) -> None:
    """An MTA-STS policy naming another MX does not stop a host DANE vouches for."""
    server = PolicyServer(world.ca.server_context(f"mta-sts.{DOMAIN}"))
    async with server:
        server.serve("enforce", "elsewhere.test")
        world.dns.add_txt(f"_mta-sts.{DOMAIN}", "v=STSv1; id=one;")
        world.dns.add_a(f"mta-sts.{DOMAIN}", "127.0.0.1")
        world.dns.add_tlsa(TLSA_NAME, 3, 1, 1, world.ca.spki_sha256(MX_NAME))
        pl = await world.postline(tls_ca_file=str(world.ca.ca_file), mta_sts_port=server.port)
        sent = await pl.send(to=f"user@{DOMAIN}")
        detail = await pl.wait_for_status(sent["id"], ["delivered"])
        assert last_row(detail)["tls_policy"] == "dane"
        assert len(server.requests) == 1


def test_trust_local_refuses_a_remote_resolver(tmp_path: Path) -> None:
    try:
        load_settings(data_dir=tmp_path, dnssec="trust-local", dns_nameservers="8.8.8.8")
    except ConfigError as exc:
        assert "loopback" in str(exc) and "8.8.8.8" in str(exc)
    else:
        raise AssertionError("a remote resolver's AD bit was accepted")


async def test_an_mx_whose_tlsa_lookup_fails_is_skipped_for_the_next(world: DaneWorld) -> None:
    """RFC 7672 2.2: that host is unusable; another MX that DANE vouches for still is."""
    backup = FakeMX("127.0.0.9", world.mx.port, hostname="mx2.dane.test")
    backup.tls_context = world.ca.server_context("mx2.dane.test")
    async with backup:
        world.dns.remove(DOMAIN)
        world.dns.add_mx(DOMAIN, (10, MX_NAME), (20, "mx2.dane.test"))
        world.dns.add_a("mx2.dane.test", "127.0.0.9")
        world.dns.servfail(TLSA_NAME)
        digest = world.ca.spki_sha256("mx2.dane.test")
        world.dns.add_tlsa("_25._tcp.mx2.dane.test", 3, 1, 1, digest)
        pl = await world.postline()
        sent = await pl.send(to=f"user@{DOMAIN}")
        detail = await pl.wait_for_status(sent["id"], ["delivered"])
        row = last_row(detail)
        assert (row["mx_host"], row["tls_policy"]) == ("mx2.dane.test", "dane")
        assert world.mx.connections == 0 and len(backup.received) == 1
