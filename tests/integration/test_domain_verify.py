"""POST /v1/domains/{id}/verify checks the published records in (our fake) DNS."""

from __future__ import annotations

from tests.harness import FakeDNS
from tests.harness.postline import PostlineUnderTest


async def test_verify_reports_each_record(postline: PostlineUnderTest, fake_dns: FakeDNS) -> None:
    created = await postline.client.post(
        "/v1/domains", json={"name": "brand.test"}, headers=postline.auth()
    )
    assert created.status_code == 201
    domain = created.json()
    records = {r["purpose"]: r for r in domain["dns_records"]}
    assert set(records) == {"dkim", "spf", "dmarc", "return_path"}

    first = await postline.client.post(
        f"/v1/domains/{domain['id']}/verify", headers=postline.auth()
    )
    assert first.status_code == 200
    assert {r["purpose"]: r["status"] for r in first.json()["dns_records"]} == {
        "dkim": "missing",
        "spf": "missing",
        "dmarc": "missing",
        "return_path": "missing",
    }
    assert first.json()["verified"] is False

    fake_dns.add_txt(records["dkim"]["name"], records["dkim"]["value"])
    fake_dns.add_txt(records["spf"]["name"], records["spf"]["value"])
    fake_dns.add_txt(records["dmarc"]["name"], "v=DMARC1; p=reject")
    fake_dns.add_mx(records["return_path"]["name"], (10, "somewhere-else.test"))
    second = await postline.client.post(
        f"/v1/domains/{domain['id']}/verify", headers=postline.auth()
    )
    statuses = {r["purpose"]: r["status"] for r in second.json()["dns_records"]}
    assert statuses == {
        "dkim": "verified",
        "spf": "verified",
        "dmarc": "verified",
        "return_path": "mismatch",
    }
    assert second.json()["verified"] is True
