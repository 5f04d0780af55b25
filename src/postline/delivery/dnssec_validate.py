"""DNSSEC validation inside Postline (``POSTLINE_DNSSEC=validate``).

DANE is only as good as the proof that its records are the zone owner's. Here
that proof is checked by Postline itself, so the resolver (any resolver, local
or remote) is only a transport: it is asked with the DO and CD bits and its
answers are judged by signatures walked down from a trust anchor (the IANA root
KSKs by default, ``POSTLINE_DNSSEC_TRUST_ANCHORS`` to name others).

An answer comes out as one of:

* **secure**: every RRset in it (and in the CNAME chain to it) carries an RRSIG
  that verifies with a DNSKEY the chain of trust vouches for;
* **insecure**: the name is in a zone that is provably unsigned (a DS absence
  proven by a signed NSEC/NSEC3 in its parent), or under no trust anchor;
* **bogus** (:class:`Bogus`): a signature fails or has expired, or records or a
  denial come without signatures from a zone that is signed.

Simplifications (docs/TLS.md): a denial is accepted on an NSEC/NSEC3 record that
matches or covers the name; the full NSEC3 closest-encloser proof and the
wildcard non-existence proof are not checked; an opt-out NSEC3 covering a name
is taken as proof that its delegation is unsigned.
"""

from __future__ import annotations

import base64
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.rrset
from cryptography.utils import CryptographyDeprecationWarning
from dns.rdtypes.ANY.DNSKEY import DNSKEY
from dns.rdtypes.ANY.DS import DS

# dnspython's DNSSEC module names cryptography's DSA classes, which cryptography has
# deprecated: the warning would print on stderr of every command (a one-line CLI
# error became five lines), for an algorithm Postline never trusts anyway.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", CryptographyDeprecationWarning)
    import dns.dnssec

#: The IANA root zone trust anchors (KSK-2017 and KSK-2024), as DS records.
ROOT_ANCHORS = """\
. IN DS 20326 8 2 E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D
. IN DS 38696 8 2 683D2D0ACB8C9B712A1948B27F741219298D0A450D612C483AF444A4C0FB2B16
"""

#: CNAME hops followed in one answer.
MAX_CNAMES = 8
#: How long validated keys are kept at most (their TTL when shorter).
MAX_KEY_SECONDS = 3600.0
#: Zones whose keys are remembered (the oldest are forgotten beyond this).
MAX_ZONES = 10_000

Anchors = dict[dns.name.Name, list[DS | DNSKEY]]


class Status(Enum):
    SECURE = "secure"
    INSECURE = "insecure"


class Bogus(Exception):
    """The answer claims a signed zone but its proof does not hold: never believed,
    never taken as "no records" either."""


class Unanswered(Exception):
    """SERVFAIL, timeout or no server: nothing is known."""


@dataclass(frozen=True)
class Validated:
    status: Status
    rrset: dns.rrset.RRset | None  # None: the name or type does not exist
    ttl: float


@dataclass(frozen=True)
class _Keys:
    status: Status
    dnskeys: dns.rrset.RRset | None
    until: float


def parse_anchors(text: str) -> Anchors:
    """DS or DNSKEY records in zone-file form (``owner [ttl] [IN] DS|DNSKEY rdata``),
    one a line; ``;`` and ``#`` start comments."""
    anchors: Anchors = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split(";", 1)[0].split("#", 1)[0].strip()
        if not line:
            continue
        tokens = line.split()
        kinds = [i for i, t in enumerate(tokens) if t.upper() in ("DS", "DNSKEY")]
        if len(tokens) < 3 or not kinds:
            raise ValueError(f"line {number}: expected 'owner [ttl] [IN] DS|DNSKEY rdata'")
        at = kinds[0]
        try:
            owner = dns.name.from_text(tokens[0])
            rdata = dns.rdata.from_text(
                dns.rdataclass.IN, tokens[at].upper(), " ".join(tokens[at + 1 :])
            )
        except (dns.exception.DNSException, ValueError) as exc:
            raise ValueError(f"line {number}: {exc}") from None
        assert isinstance(rdata, DS | DNSKEY)
        anchors.setdefault(owner, []).append(rdata)
    if not anchors:
        raise ValueError("no DS or DNSKEY record found")
    return anchors


def load_anchors(path: str) -> Anchors:
    """The anchors of ``path``, or the root's when it is empty."""
    return parse_anchors(Path(path).read_text() if path else ROOT_ANCHORS)


class Validator:
    """Validates answers fetched through ``resolver``; validated DNSKEY sets are
    cached for their TTL (at most :data:`MAX_KEY_SECONDS`)."""

    def __init__(self, resolver: dns.asyncresolver.Resolver, anchors: Anchors) -> None:
        self.resolver = resolver
        self.anchors = anchors
        self._keys: dict[dns.name.Name, _Keys] = {}

    async def resolve(self, text: str, rdtype: str) -> Validated:
        """The validated answer for ``text``/``rdtype``; raises Bogus or Unanswered."""
        qname = dns.name.from_text(text)
        kind = dns.rdatatype.from_text(rdtype)
        msg = await self._query(qname, kind)
        owner, secure = qname, True
        for _ in range(MAX_CNAMES):
            rrset = _find(msg.answer, owner, kind)
            if rrset is not None:
                secure &= await self._check(msg, rrset) is Status.SECURE
                return Validated(_status(secure), rrset, _lifetime(rrset, msg.answer))
            cname = _find(msg.answer, owner, dns.rdatatype.CNAME)
            if cname is None:
                break
            secure &= await self._check(msg, cname) is Status.SECURE
            owner = cname[0].target
        secure &= await self._check_denial(msg, owner, kind) is Status.SECURE
        return Validated(_status(secure), None, 300.0)

    # ------------------------------------------------------------------ signatures

    async def _check(self, msg: dns.message.Message, rrset: dns.rrset.RRset) -> Status:
        """Whether ``rrset`` (from the answer of ``msg``) is secure or insecure."""
        what = f"{rrset.name} {dns.rdatatype.to_text(rrset.rdtype)}"
        sigs = _find(msg.answer, rrset.name, dns.rdatatype.RRSIG, rrset.rdtype)
        if sigs is None:
            zone = await self._zone_of(_above(rrset))
            if (await self._keys_of(zone)).status is Status.SECURE:
                raise Bogus(f"{what} has no signature in the signed zone {zone}")
            return Status.INSECURE
        signer = sigs[0].signer
        if not rrset.name.is_subdomain(signer) or (
            rrset.rdtype == dns.rdatatype.DS and rrset.name == signer
        ):
            raise Bogus(f"{what} is signed by {signer}, which is not its zone")
        keys = await self._keys_of(signer)
        if keys.status is Status.INSECURE or keys.dnskeys is None:
            return Status.INSECURE
        _verify(rrset, sigs, signer, keys.dnskeys, what)
        return Status.SECURE

    async def _check_denial(
        self, msg: dns.message.Message, name: dns.name.Name, kind: dns.rdatatype.RdataType
    ) -> Status:
        """Whether the absence of ``name``/``kind`` is proven (secure), unprovable
        because its zone is unsigned (insecure), or unproven in a signed zone (bogus)."""
        what = f"{name} {dns.rdatatype.to_text(kind)}"
        soa = next((r for r in msg.authority if r.rdtype == dns.rdatatype.SOA), None)
        start = name.parent() if kind == dns.rdatatype.DS and name != dns.name.root else name
        if soa is not None and start.is_subdomain(soa.name):
            zone = self._within_anchor(start, soa.name)
        else:
            zone = await self._zone_of(start)
        keys = await self._keys_of(zone)
        if keys.status is Status.INSECURE or keys.dnskeys is None:
            return Status.INSECURE
        proofs = [r for r in msg.authority if r.rdtype in (dns.rdatatype.NSEC, dns.rdatatype.NSEC3)]
        if not proofs:
            raise Bogus(f"the signed zone {zone} denies {what} without NSEC/NSEC3 records")
        for proof in proofs:
            sigs = _find(msg.authority, proof.name, dns.rdatatype.RRSIG, proof.rdtype)
            if sigs is None or sigs[0].signer != zone:
                raise Bogus(f"the denial of {what} carries no signature of {zone}")
            _verify(proof, sigs, zone, keys.dnskeys, f"the denial of {what}")
        if not _denies(proofs, name, kind, zone):
            raise Bogus(f"the NSEC/NSEC3 records of {zone} do not prove {what} absent")
        return Status.SECURE

    # ------------------------------------------------------------------ chain of trust

    async def _keys_of(self, zone: dns.name.Name) -> _Keys:
        cached = self._keys.get(zone)
        if cached is not None and cached.until > time.monotonic():
            return cached
        found = await self._fetch_keys(zone)
        self._keys.pop(zone, None)
        self._keys[zone] = found
        if len(self._keys) > MAX_ZONES:
            del self._keys[next(iter(self._keys))]
        return found

    async def _fetch_keys(self, zone: dns.name.Name) -> _Keys:
        anchor = max((a for a in self.anchors if zone.is_subdomain(a)), key=len, default=None)
        if anchor is None:
            return _Keys(Status.INSECURE, None, time.monotonic() + MAX_KEY_SECONDS)
        if zone == anchor:
            return await self._trusted_keys(zone, self.anchors[zone])
        msg = await self._query(zone, dns.rdatatype.DS)
        ds = _find(msg.answer, zone, dns.rdatatype.DS)
        if ds is None:
            await self._check_denial(msg, zone, dns.rdatatype.DS)
            return _Keys(Status.INSECURE, None, time.monotonic() + 300.0)
        if await self._check(msg, ds) is Status.INSECURE:
            return _Keys(Status.INSECURE, None, time.monotonic() + float(ds.ttl))
        return await self._trusted_keys(zone, list(ds))

    async def _trusted_keys(self, zone: dns.name.Name, trusted: list[DS | DNSKEY]) -> _Keys:
        """The DNSKEY set of ``zone``, signed by a key that ``trusted`` names."""
        msg = await self._query(zone, dns.rdatatype.DNSKEY)
        dnskeys = _find(msg.answer, zone, dns.rdatatype.DNSKEY)
        sigs = _find(msg.answer, zone, dns.rdatatype.RRSIG, dns.rdatatype.DNSKEY)
        if dnskeys is None or sigs is None:
            raise Bogus(f"the signed zone {zone} has no signed DNSKEY set")
        entry = [k for k in dnskeys if any(_names(t, zone, k) for t in trusted)]
        if not entry:
            raise Bogus(f"no DNSKEY of {zone} matches its DS or trust anchor")
        anchored = dns.rrset.RRset(zone, dns.rdataclass.IN, dns.rdatatype.DNSKEY)
        for key in entry:
            anchored.add(key)
        _verify(dnskeys, sigs, zone, anchored, f"the DNSKEY set of {zone}")
        until = time.monotonic() + min(_lifetime(dnskeys, msg.answer), MAX_KEY_SECONDS)
        return _Keys(Status.SECURE, dnskeys, until)

    def _within_anchor(self, name: dns.name.Name, zone: dns.name.Name) -> dns.name.Name:
        """``zone``, or the trust anchor covering ``name`` when ``zone`` claims to be
        above it: an SOA naming a zone outside the anchor must not make a name under
        the anchor look unsigned."""
        covering = [a for a in self.anchors if name.is_subdomain(a)]
        anchor = max(covering, key=len, default=None)
        if anchor is not None and not zone.is_subdomain(anchor):
            return anchor
        return zone

    async def _zone_of(self, name: dns.name.Name) -> dns.name.Name:
        """The apex of the zone ``name`` is in (its SOA, or the one a NODATA names),
        never above the trust anchor that covers it."""
        return self._within_anchor(name, await self._apex(name))

    async def _apex(self, name: dns.name.Name) -> dns.name.Name:
        while True:
            msg = await self._query(name, dns.rdatatype.SOA)
            if _find(msg.answer, name, dns.rdatatype.SOA) is not None:
                return name
            for rrset in msg.authority:
                if rrset.rdtype == dns.rdatatype.SOA and name.is_subdomain(rrset.name):
                    return rrset.name
            if name == dns.name.root:
                return name
            name = name.parent()

    async def _query(
        self, name: dns.name.Name, kind: dns.rdatatype.RdataType
    ) -> dns.message.Message:
        try:
            answer = await self.resolver.resolve(name, kind, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN as exc:
            response = exc.response(name)  # type: ignore[no-untyped-call]
            if not isinstance(response, dns.message.Message):
                raise Unanswered(f"NXDOMAIN for {name} without a response") from None
            return response
        except dns.resolver.NoNameservers as exc:
            raise Unanswered(f"SERVFAIL: {exc}") from None
        except dns.exception.DNSException as exc:
            raise Unanswered(f"{type(exc).__name__}: {exc}") from None
        response = answer.response
        assert isinstance(response, dns.message.Message)
        return response


def _status(secure: bool) -> Status:
    return Status.SECURE if secure else Status.INSECURE


def _lifetime(rrset: dns.rrset.RRset, section: list[dns.rrset.RRset]) -> float:
    """How long ``rrset`` may be believed: its TTL, and no longer than the earliest
    signature in ``section`` stays valid."""
    now = time.time()
    ends = [
        float(s.expiration) - now for r in section if r.rdtype == dns.rdatatype.RRSIG for s in r
    ]
    return max(0.0, min([float(rrset.ttl), *ends]))


def _above(rrset: dns.rrset.RRset) -> dns.name.Name:
    """Where to look for the zone of ``rrset``: DS records live in the parent."""
    if rrset.rdtype == dns.rdatatype.DS and rrset.name != dns.name.root:
        return rrset.name.parent()
    return rrset.name


def _find(
    section: list[dns.rrset.RRset],
    name: dns.name.Name,
    kind: dns.rdatatype.RdataType,
    covers: dns.rdatatype.RdataType = dns.rdatatype.NONE,
) -> dns.rrset.RRset | None:
    for rrset in section:
        if rrset.name == name and rrset.rdtype == kind and rrset.covers == covers:
            return rrset
    return None


def _verify(
    rrset: dns.rrset.RRset,
    sigs: dns.rrset.RRset,
    signer: dns.name.Name,
    keys: dns.rrset.RRset,
    what: str,
) -> None:
    try:
        dns.dnssec.validate(rrset, sigs, {signer: keys})
    except dns.exception.ValidationFailure as exc:
        raise Bogus(f"the signature over {what} does not verify ({exc})") from None


def _names(trusted: DS | DNSKEY, zone: dns.name.Name, key: dns.rdata.Rdata) -> bool:
    """Whether the anchor or DS record ``trusted`` designates ``key``."""
    if not isinstance(key, DNSKEY):
        return False
    if isinstance(trusted, DNSKEY):
        return bool(trusted == key)
    try:
        return bool(dns.dnssec.make_ds(zone, key, trusted.digest_type) == trusted)
    except (dns.exception.UnsupportedAlgorithm, ValueError):
        return False


def _types(windows: object) -> Iterator[int]:
    """The types in an NSEC/NSEC3 type bitmap."""
    for window, bitmap in windows:  # type: ignore[attr-defined]
        for index, byte in enumerate(bitmap):
            for bit in range(8):
                if byte & (0x80 >> bit):
                    yield window * 256 + index * 8 + bit


def _denies(
    proofs: list[dns.rrset.RRset],
    name: dns.name.Name,
    kind: dns.rdatatype.RdataType,
    zone: dns.name.Name,
) -> bool:
    """Whether a (verified) NSEC or NSEC3 record proves ``name``/``kind`` absent.

    For DS the name must be a delegation (NS in the bitmap, or an opt-out NSEC3
    covering it): a signer name that is no zone cut must not make a zone look unsigned.
    """
    for proof in proofs:
        for rdata in proof:
            if proof.rdtype == dns.rdatatype.NSEC:
                if proof.name == name:
                    if _absent(set(_types(rdata.windows)), kind):
                        return True
                elif kind != dns.rdatatype.DS and _between(proof.name, name, rdata.next, zone):
                    return True
                continue
            hashed = dns.dnssec.nsec3_hash(name, rdata.salt, rdata.iterations, rdata.algorithm)
            owner = proof.name.labels[0].decode().upper()
            following = base64.b32hexencode(rdata.next).decode().rstrip("=").upper()
            if owner == hashed:
                if _absent(set(_types(rdata.windows)), kind):
                    return True
            elif _hash_between(owner, hashed, following) and (
                kind != dns.rdatatype.DS or rdata.flags & 1
            ):
                return True  # covered: no such name; for DS only an opt-out span is "unsigned"
    return False


def _hash_between(owner: str, hashed: str, following: str) -> bool:
    """Whether an NSEC3 span covers ``hashed`` (the last span wraps around)."""
    return owner < hashed < following or (following <= owner and hashed > owner)


def _absent(present: set[int], kind: dns.rdatatype.RdataType) -> bool:
    if kind in present or dns.rdatatype.CNAME in present:
        return False
    return kind != dns.rdatatype.DS or dns.rdatatype.NS in present


def _between(
    owner: dns.name.Name, name: dns.name.Name, following: dns.name.Name, zone: dns.name.Name
) -> bool:
    """Whether the NSEC ``owner``-``following`` covers ``name`` (canonical order; the
    last NSEC of a zone points back at its apex)."""
    if following == zone:
        return bool(owner < name)
    return bool(owner < name < following)
