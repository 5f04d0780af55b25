"""Sending domains: creation with a DKIM key, and the DNS records to publish."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass

import dns.asyncresolver
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from postline.delivery.routing import lookup_texts
from postline.dkim import dkim_dns_value
from postline.ids import new_id
from postline.store import domains as domain_store
from postline.store.db import Database
from postline.store.domains import Domain

SANDBOX_DOMAIN = "sandbox.postline.test"
SIMULATOR_DOMAIN = "simulator.postline.test"

# \Z, not $: $ also matches before a final newline ("a\n.test" was a valid domain).
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)\Z")


class DomainError(ValueError):
    """A domain name that cannot be a sending domain, or one that already exists."""


def normalize_domain(name: str) -> str:
    """Lower-case, IDNA-encode and check a domain name; raise DomainError if it is not one."""
    text = name.strip().rstrip(".").lower()
    try:
        text = text.encode("idna").decode("ascii")
    except UnicodeError:
        raise DomainError(f"{name!r} is not a valid domain name") from None
    labels = text.split(".")
    if len(text) > 253 or len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        raise DomainError(f"{name!r} is not a valid domain name")
    return text


def return_path_domain(domain: str) -> str:
    """Where bounces come back: a subdomain whose MX points at Postline's inbound port."""
    return f"bounces.{domain}"


def _generate_dkim_key() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@dataclass(frozen=True)
class DnsRecord:
    type: str
    name: str
    value: str
    purpose: str


def inbound_mx(name: str, hostname: str) -> DnsRecord:
    """The MX that brings mail for ``name`` (an inbound route's domain) to the listener."""
    return DnsRecord("MX", name, f"10 {hostname}", "inbound")


def dns_records(
    domain: Domain,
    hostname: str,
    inbound_domains: Sequence[str] = (),
    tracking_target: str = "",
) -> list[DnsRecord]:
    """The records an operator publishes so receivers trust mail from this domain, the
    MX of each domain its inbound routes take mail for, and the CNAME of its tracking
    host (to ``tracking_target``, ``postline.tracking.hosts.cname_target``)."""
    records: list[DnsRecord] = []
    if domain.dkim_private_key:
        records.append(
            DnsRecord(
                "TXT",
                f"{domain.dkim_selector}._domainkey.{domain.name}",
                dkim_dns_value(domain.dkim_private_key),
                "dkim",
            )
        )
    rp = return_path_domain(domain.name)
    records += [
        DnsRecord("TXT", rp, f"v=spf1 a:{hostname} ~all", "spf"),
        DnsRecord("MX", rp, f"10 {hostname}", "return_path"),
        DnsRecord("TXT", f"_dmarc.{domain.name}", "v=DMARC1; p=none;", "dmarc"),
    ]
    records += [inbound_mx(name, hostname) for name in sorted(set(inbound_domains))]
    if domain.tracking_host:
        records.append(
            DnsRecord("CNAME", domain.tracking_host, tracking_target or hostname, "tracking")
        )
    return records


async def create_domain(db: Database, name: str) -> Domain:
    """Create a sending domain with a fresh 2048-bit DKIM key."""
    normalized = normalize_domain(name)
    # 40-100 ms of CPU: in a thread, so the event loop goes on answering meanwhile.
    private_pem = await asyncio.to_thread(_generate_dkim_key)
    selector = "pl" + new_id()[-6:]
    async with db.write() as conn:
        if await domain_store.get_domain_by_name(conn, normalized) is not None:
            raise DomainError(f"domain {normalized} already exists")
        domain_id = new_id("dom_")
        await domain_store.insert_domain(
            conn, domain_id=domain_id, name=normalized, selector=selector, private_key=private_pem
        )
        row = await domain_store.get_domain(conn, domain_id)
    assert row is not None
    return row


async def ensure_domain(db: Database, name: str) -> Domain:
    """The domain, created if missing (the sandbox domain on first run)."""
    async with db.read() as conn:
        row = await domain_store.get_domain_by_name(conn, name)
    if row is not None:
        return row
    try:
        return await create_domain(db, name)
    except DomainError:
        async with db.read() as conn:
            row = await domain_store.get_domain_by_name(conn, name)
        assert row is not None
        return row


def _matches(record: DnsRecord, found: list[str]) -> bool:
    if record.purpose == "dkim":
        wanted = record.value.replace(" ", "")
        return any(text.replace(" ", "") == wanted for text in found)
    if record.purpose == "tracking":
        wanted = record.value.rstrip(".").lower()
        return any(text.rstrip(".").lower() == wanted for text in found)
    if record.purpose in ("return_path", "inbound"):
        host = record.value.split()[-1].lower()
        return any(line.split()[-1].lower() == host for line in found)
    prefix = record.value.split()[0].lower()  # v=spf1 / v=DMARC1: present is enough
    return any(text.lower().startswith(prefix) for text in found)


async def verify_domain(
    db: Database,
    resolver: dns.asyncresolver.Resolver,
    domain: Domain,
    hostname: str,
    tracking_target: str = "",
) -> Domain:
    """Look the domain's records up in DNS now and store what was found. The tracking
    host's CNAME gets a status too; ``verified`` still means DKIM and SPF."""
    checks: dict[str, str] = {}
    for record in dns_records(domain, hostname, tracking_target=tracking_target):
        found = await lookup_texts(resolver, record.name, record.type)
        checks[record.purpose] = (
            "verified" if _matches(record, found) else ("mismatch" if found else "missing")
        )
    verified = checks.get("dkim") == "verified" and checks.get("spf") == "verified"
    async with db.write() as conn:
        await domain_store.set_verification(conn, domain.id, checks, verified)
        row = await domain_store.get_domain(conn, domain.id)
    assert row is not None
    return row
