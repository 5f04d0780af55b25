"""Mail from a domain is DKIM-signed with its key; dkimpy verifies it at the fake MX."""

from __future__ import annotations

from typing import Any

import dkim
import dns.resolver

from tests.harness import FakeDNS, FakeMX
from tests.harness.postline import PostlineUnderTest


def _dns_via(fake_dns: FakeDNS) -> Any:
    """dkimpy's DNS hook, answered by the test DNS server (where the record is published)."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [fake_dns.host]
    resolver.port = fake_dns.port

    def lookup(name: bytes, timeout: int = 5) -> bytes:
        answer = resolver.resolve(name.decode().rstrip("."), "TXT")
        return b"".join(b"".join(r.strings) for r in answer)

    return lookup


async def test_signed_with_the_from_domain_and_verified_by_dkimpy(
    postline: PostlineUnderTest, fake_mx: FakeMX, fake_dns: FakeDNS
) -> None:
    domains = (await postline.client.get("/v1/domains", headers=postline.auth())).json()["data"]
    (record,) = [r for r in domains[0]["dns_records"] if r["purpose"] == "dkim"]
    fake_dns.add_txt(record["name"], record["value"])
    sent = await postline.send(to="reader@dest.test", subject="Signed ✓", text="body\n" * 50)
    await postline.wait_for_status(sent["id"], ["delivered"])
    (received,) = fake_mx.received
    signature = received.message["DKIM-Signature"]
    assert "d=example.test" in signature.replace(" ", "")
    assert f"s={domains[0]['dkim_selector']}" in signature.replace(" ", "")
    assert dkim.verify(received.data, dnsfunc=_dns_via(fake_dns))
    tampered = received.data.replace(b"body", b"bodY", 1)
    assert not dkim.verify(tampered, dnsfunc=_dns_via(fake_dns))
