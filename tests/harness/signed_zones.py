"""A DNSSEC-signed test hierarchy served by :class:`FakeDNS`: keys made in the test.

``SignedHierarchy(fake, "test.")`` makes the anchor zone ``test.``; ``zone()``
adds child zones, signed (a DS in the parent) or not (an NSEC in the parent
proving the delegation has no DS); ``add()`` puts a signed RRset in a zone.
``anchor_file()`` writes the anchor's DS for POSTLINE_DNSSEC_TRUST_ANCHORS.
ECDSA P-256 keys keep answers inside one UDP datagram.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import dns.dnssec
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from cryptography.hazmat.primitives.asymmetric import ec
from dns.dnssectypes import Algorithm
from dns.rdtypes.ANY.DNSKEY import DNSKEY
from dns.rdtypes.ANY.RRSIG import RRSIG

from tests.harness.fake_dns import FakeDNS

TTL = 60


@dataclass
class Zone:
    name: dns.name.Name
    key: ec.EllipticCurvePrivateKey | None  # None: an unsigned zone
    dnskey: DNSKEY | None


class SignedHierarchy:
    def __init__(self, dns_server: FakeDNS, anchor: str = "test.") -> None:
        self.dns = dns_server
        self.anchor = self._make(dns.name.from_text(anchor), signed=True)

    def zone(self, name: str, parent: Zone | None = None, *, signed: bool = True) -> Zone:
        """A child zone of ``parent`` (the anchor by default), delegated from it."""
        above = parent or self.anchor
        zone = self._make(dns.name.from_text(name), signed=signed)
        if zone.dnskey is not None:
            ds = dns.dnssec.make_ds(zone.name, zone.dnskey, "SHA256")
            self.add(above, zone.name, "DS", ds.to_text())
        else:  # the parent proves the delegation has no DS: NS but no DS at its name
            nsec = self.rrset(zone.name, "NSEC", f"zz.{above.name} NS RRSIG NSEC")
            self.dns.add_denial(str(zone.name), *self.signed(above, nsec), *self._soa(above))
        return zone

    def add(self, zone: Zone, owner: str | dns.name.Name, rdtype: str, *texts: str) -> None:
        """``texts`` as an RRset of ``zone``, with its RRSIG when the zone is signed."""
        self.add_rrset(zone, self.rrset(owner, rdtype, *texts))

    def add_rrset(
        self, zone: Zone, rrset: dns.rrset.RRset, *, broken: bool = False, expired: bool = False
    ) -> None:
        """``rrset`` and its RRSIG; ``broken``: one byte of the signature flipped;
        ``expired``: a signature whose validity ended yesterday."""
        for part in self.signed(zone, rrset, broken=broken, expired=expired):
            self.dns.add_rrset(part)

    def signed(
        self, zone: Zone, rrset: dns.rrset.RRset, *, broken: bool = False, expired: bool = False
    ) -> list[dns.rrset.RRset]:
        if zone.key is None or zone.dnskey is None:
            return [rrset]
        now = int(time.time()) - (2 * 86400 if expired else 0)
        sig = dns.dnssec.sign(
            rrset,
            zone.key,
            zone.name,
            zone.dnskey,
            inception=now - 3600,
            expiration=now + 86400,
        )
        if broken:
            flipped = bytes([sig.signature[0] ^ 0xFF]) + sig.signature[1:]
            replaced = sig.replace(signature=flipped)
            assert isinstance(replaced, RRSIG)
            sig = replaced
        sigs = dns.rrset.RRset(rrset.name, rrset.rdclass, dns.rdatatype.RRSIG, rrset.rdtype)
        sigs.update_ttl(rrset.ttl)
        sigs.add(sig)
        return [rrset, sigs]

    @staticmethod
    def rrset(owner: str | dns.name.Name, rdtype: str, *texts: str) -> dns.rrset.RRset:
        name = owner if isinstance(owner, dns.name.Name) else dns.name.from_text(owner)
        return dns.rrset.from_text(name, TTL, "IN", rdtype, *texts)

    def anchor_file(self, path: Path) -> Path:
        assert self.anchor.dnskey is not None
        ds = dns.dnssec.make_ds(self.anchor.name, self.anchor.dnskey, "SHA256")
        path.write_text(f"{self.anchor.name} IN DS {ds.to_text()}\n")
        return path

    def _make(self, name: dns.name.Name, *, signed: bool) -> Zone:
        zone = Zone(name, None, None)
        if signed:
            zone.key = ec.generate_private_key(ec.SECP256R1())
            zone.dnskey = dns.dnssec.make_dnskey(
                zone.key.public_key(), Algorithm.ECDSAP256SHA256, flags=257
            )
            self.add(zone, name, "DNSKEY", zone.dnskey.to_text())
        for part in self._soa(zone):
            self.dns.add_rrset(part)
        return zone

    def _soa(self, zone: Zone) -> list[dns.rrset.RRset]:
        soa = self.rrset(zone.name, "SOA", f"ns.{zone.name} host.{zone.name} 1 60 60 600 60")
        return self.signed(zone, soa)
