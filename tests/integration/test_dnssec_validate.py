"""DANE with POSTLINE_DNSSEC=validate: Postline checks the DNSSEC chain itself.

The fake DNS on loopback serves a hierarchy signed in the test (anchor zone
``test.``, a signed child ``dane.test.``, an unsigned child ``plain.test.``) and
sets no AD bit: only signatures walked down from the anchor file count. The MX
is an aiosmtpd server on 127.0.0.8 with STARTTLS and a throwaway CA's certificate.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.name
import pytest
import pytest_asyncio
from dns.rdtypes.ANY.DS import DS

from postline.config import ConfigError, load_settings
from postline.delivery.dnssec_validate import Bogus, Status, Validator, load_anchors
from postline.delivery.tlsa import validating_resolver
from tests.harness import FakeDNS, FakeMX
from tests.harness.postline import Factory, PostlineUnderTest
from tests.harness.signed_zones import SignedHierarchy, Zone
from tests.harness.timeline import deferred, last_row
from tests.harness.tls import ThrowawayCA

DOMAIN = "dane.test"
MX_NAME = "mx.dane.test"
TLSA_NAME = f"_25._tcp.{MX_NAME}"


@dataclass
class SignedWorld:
    ca: ThrowawayCA
    tree: SignedHierarchy
    signed: Zone
    plain: Zone
    mx: FakeMX
    factory: Factory
    anchors: Path

    def tlsa(self, digest: bytes, *, broken: bool = False) -> None:
        rrset = self.tree.rrset(TLSA_NAME, "TLSA", f"3 1 1 {digest.hex()}")
        self.tree.add_rrset(self.signed, rrset, broken=broken)

    async def postline(self, **overrides: Any) -> PostlineUnderTest:
        return await self.factory(
            dnssec="validate", dnssec_trust_anchors=str(self.anchors), **overrides
        )

    def validator(self) -> Validator:
        host, port = self.tree.dns.nameserver.rsplit(":", 1)
        resolver = validating_resolver([(host, int(port))], check=True)
        return Validator(resolver, load_anchors(str(self.anchors)))


@pytest_asyncio.fixture
async def world(
    postline_factory: Factory, fake_dns: FakeDNS, fake_mx: FakeMX, tmp_path: Path
) -> AsyncIterator[SignedWorld]:
    tree = SignedHierarchy(fake_dns, "test.")
    signed = tree.zone(f"{DOMAIN}.")
    tree.add(signed, DOMAIN, "MX", f"10 {MX_NAME}.")
    tree.add(signed, MX_NAME, "A", "127.0.0.8")
    plain = tree.zone("plain.test.", signed=False)
    tree.add(plain, "plain.test", "MX", "10 mx.plain.test.")
    tree.add(plain, "mx.plain.test", "A", "127.0.0.8")
    anchors = tree.anchor_file(tmp_path / "anchors.txt")
    ca = ThrowawayCA.create(tmp_path)
    mx = await ca.start_mx("127.0.0.8", fake_mx.port, MX_NAME)
    yield SignedWorld(ca, tree, signed, plain, mx, postline_factory, anchors)
    await mx.stop()


async def test_the_validator_tells_secure_insecure_and_bogus(world: SignedWorld) -> None:
    world.tlsa(b"\x00" * 32)
    world.tree.add_rrset(
        world.signed, world.tree.rrset("bad.dane.test", "A", "127.0.0.9"), broken=True
    )
    validator = world.validator()
    assert (await validator.resolve(TLSA_NAME, "TLSA")).status is Status.SECURE
    assert (await validator.resolve("mx.plain.test", "A")).status is Status.INSECURE
    with pytest.raises(Bogus, match="does not verify"):
        await validator.resolve("bad.dane.test", "A")
    with pytest.raises(Bogus, match="without NSEC/NSEC3"):
        await validator.resolve(f"_25._tcp.mx2.{DOMAIN}", "TLSA")  # a denial with no proof


async def test_expired_signatures_and_unproven_unsigned_zones_are_bogus(
    world: SignedWorld,
) -> None:
    tree = world.tree
    tree.add_rrset(world.signed, tree.rrset("old.dane.test", "A", "127.0.0.9"), expired=True)
    # A child of the signed anchor with no DS and no NSEC proof: stripped, not unsigned.
    tree.dns.add_rrset(tree.rrset("stripped.test.", "SOA", "ns.stripped.test. h.test. 1 1 1 1 1"))
    tree.dns.add_rrset(tree.rrset("stripped.test.", "MX", "10 mx.stripped.test."))
    validator = world.validator()
    with pytest.raises(Bogus, match="does not verify"):
        await validator.resolve("old.dane.test", "A")
    with pytest.raises(Bogus, match=r"denies stripped\.test\. DS without NSEC"):
        await validator.resolve("stripped.test", "MX")


async def test_an_soa_above_the_trust_anchor_does_not_make_a_name_unsigned(
    world: SignedWorld,
) -> None:
    tree = world.tree
    tree.dns.add_rrset(tree.rrset("sneaky.test.", "A", "127.0.0.9"))  # no RRSIG
    tree.dns.add_denial("sneaky.test", tree.rrset(".", "SOA", ". h. 1 1 1 1 1"))
    with pytest.raises(Bogus, match="no signature in the signed zone test"):
        await world.validator().resolve("sneaky.test", "A")


def test_the_built_in_anchors_are_the_root_ksks() -> None:
    anchors = load_anchors("")
    assert sorted(a.key_tag for a in anchors[dns.name.root] if isinstance(a, DS)) == [20326, 38696]


async def test_a_bogus_mx_answer_defers_every_host(world: SignedWorld) -> None:
    tree = world.tree
    zone = tree.zone("broken.test.")
    tree.add_rrset(zone, tree.rrset("broken.test.", "MX", f"10 {MX_NAME}."), broken=True)
    pl = await world.postline()
    sent = await pl.send(to="user@broken.test")
    detail = await deferred(pl, sent["id"])
    assert "the MX answer for broken.test is bogus" in detail["recipients"][0]["response"]
    assert world.mx.connections == 0


async def test_a_signed_nsec_proves_a_name_absent(world: SignedWorld) -> None:
    tree = world.tree
    nsec = tree.rrset(MX_NAME, "NSEC", f"zz.{DOMAIN}. A RRSIG NSEC")
    soa = tree.rrset(f"{DOMAIN}.", "SOA", f"ns.{DOMAIN}. host.{DOMAIN}. 1 60 60 600 60")
    tree.dns.add_denial(MX_NAME, *tree.signed(world.signed, nsec), *tree.signed(world.signed, soa))
    answer = await world.validator().resolve(MX_NAME, "AAAA")
    assert (answer.status, answer.rrset) == (Status.SECURE, None)


async def test_a_valid_chain_and_a_matching_tlsa_record_deliver(world: SignedWorld) -> None:
    world.tlsa(world.ca.spki_sha256(MX_NAME))
    pl = await world.postline()
    sent = await pl.send(to=f"user@{DOMAIN}")
    detail = await pl.wait_for_status(sent["id"], ["delivered"])
    row = last_row(detail)
    assert (row["tls_policy"], row["tls_verified"]) == ("dane", True)


async def test_a_valid_chain_and_a_tlsa_record_that_does_not_match_defer(
    world: SignedWorld,
) -> None:
    world.tlsa(b"\x00" * 32)
    pl = await world.postline()
    sent = await pl.send(to=f"user@{DOMAIN}")
    detail = await deferred(pl, sent["id"])
    assert "matches none of its TLSA records" in detail["recipients"][0]["response"]
    assert world.mx.received == []


async def test_a_broken_tlsa_signature_defers_and_says_bogus(world: SignedWorld) -> None:
    world.tlsa(world.ca.spki_sha256(MX_NAME), broken=True)
    pl = await world.postline()
    sent = await pl.send(to=f"user@{DOMAIN}")
    detail = await deferred(pl, sent["id"])
    response = detail["recipients"][0]["response"]
    assert f"TLSA answer for {TLSA_NAME} is bogus" in response
    assert "does not verify" in response
    assert world.mx.connections == 0


async def test_an_unsigned_child_zone_delivers_without_dane(world: SignedWorld) -> None:
    tree = world.tree
    tree.add(world.plain, "_25._tcp.mx.plain.test", "TLSA", "3 1 1 " + "00" * 32)
    pl = await world.postline()
    sent = await pl.send(to="user@plain.test")
    detail = await pl.wait_for_status(sent["id"], ["delivered"])
    assert last_row(detail)["tls_policy"] == "opportunistic"


def test_a_bad_trust_anchor_file_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "anchors.txt"
    bad.write_text("test. IN A 127.0.0.1\n")
    with pytest.raises(ConfigError, match=r"DS\|DNSKEY") as caught:
        load_settings(data_dir=tmp_path, dnssec="validate", dnssec_trust_anchors=str(bad))
    assert "\n" not in str(caught.value)
    settings = load_settings(data_dir=tmp_path, dnssec="validate")
    assert settings.dnssec == "validate"
