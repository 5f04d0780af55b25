"""A domain's own tracking host: ``PATCH /v1/domains/{id}`` ``{"tracking": {"host"}}``
lists a CNAME in ``dns_records`` (checked in the fake DNS by ``verify``); once it checks
out, the domain's tracked links and pixel use ``https://<host>/t/...``, and the ``/t/``
endpoints answer them with that ``Host``; ``GET /t/tls`` tells a proxy which names it
may get a certificate for.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
from typing import Any
from urllib.parse import urlsplit

import pytest_asyncio

from tests.harness import FakeDNS, FakeMX
from tests.harness.postline import Factory, PostlineUnderTest

BASE = "https://links.operator.test/pl"
HOST = "track.example.test"
TARGET = "https://shop.example/orders?id=42"
HTML = f'<html><body><a href="{TARGET}">view</a></body></html>'


@pytest_asyncio.fixture
async def pl(postline_factory: Factory, database_url: str) -> PostlineUnderTest:
    """On both stores (``database_url``: SQLite and PostgreSQL)."""
    return await postline_factory(database_url=database_url, tracking_url=BASE)


async def _domain(pl: PostlineUnderTest, name: str = "example.test") -> dict[str, Any]:
    listed = (await pl.client.get("/v1/domains", headers=pl.auth())).json()["data"]
    found: list[dict[str, Any]] = [d for d in listed if d["name"] == name]
    assert len(found) == 1, listed
    return found[0]


async def _patch(pl: PostlineUnderTest, domain_id: str, **tracking: Any) -> Any:
    return await pl.client.patch(
        f"/v1/domains/{domain_id}", json={"tracking": tracking}, headers=pl.auth()
    )


async def _links(
    pl: PostlineUnderTest, fake_mx: FakeMX, to: str = "reader@dest.test"
) -> tuple[str, list[str], list[str]]:
    """The email's id, its pixel, and its links: the click link and the unsubscribe one."""
    sent = await pl.send(
        to=[to], html=HTML, track={"opens": True, "clicks": True}, unsubscribe=True
    )
    await pl.wait_for_status(sent["id"], ["delivered"])
    (received,) = [m for m in fake_mx.received if sent["message_id"].encode() in m.data]
    message = email.message_from_bytes(received.data, policy=email.policy.default)
    part = message.get_body(("html",))
    assert part is not None
    html = str(part.get_content())
    unsubscribe = str(message["List-Unsubscribe"]).strip("<>")
    links = [*re.findall(r'href="([^"]+)"', html), unsubscribe]
    return sent["id"], re.findall(r'<img src="([^"]+)"', html), links


async def test_a_tracking_host_is_a_cname_and_the_domains_links_use_it(
    pl: PostlineUnderTest, fake_mx: FakeMX, fake_dns: FakeDNS
) -> None:
    domain = await _domain(pl)
    patched = await _patch(pl, domain["id"], host="Track.Example.test.", opens=True)
    assert patched.status_code == 200, patched.text
    assert patched.json()["tracking"] == {"opens": True, "clicks": False, "host": HOST}
    (cname,) = [r for r in patched.json()["dns_records"] if r["purpose"] == "tracking"]
    # It points at the host of POSTLINE_TRACKING_URL.
    assert cname == {
        "type": "CNAME",
        "name": HOST,
        "value": "links.operator.test",
        "purpose": "tracking",
    }

    # Checked with the others: missing, then a CNAME elsewhere, then the right one.
    verify = f"/v1/domains/{domain['id']}/verify"
    first = await pl.client.post(verify, headers=pl.auth())
    assert {r["purpose"]: r.get("status") for r in first.json()["dns_records"]}[
        "tracking"
    ] == "missing"
    fake_dns.add_cname(HOST, "somewhere.else.test")
    second = await pl.client.post(verify, headers=pl.auth())
    assert {r["purpose"]: r.get("status") for r in second.json()["dns_records"]}[
        "tracking"
    ] == "mismatch"
    # Until its CNAME checks out, the domain's links keep POSTLINE_TRACKING_URL: none
    # leads to a name that does not resolve.
    _, (pixel,), (link, _) = await _links(pl, fake_mx)
    assert pixel.startswith(f"{BASE}/t/o/") and link.startswith(f"{BASE}/t/c/")
    fake_dns.remove(HOST)
    fake_dns.add_cname(HOST, "links.operator.test.")
    third = await pl.client.post(verify, headers=pl.auth())
    assert {r["purpose"]: r.get("status") for r in third.json()["dns_records"]}[
        "tracking"
    ] == "verified"

    # The domain's mail links to its own host, with POSTLINE_TRACKING_URL's path kept.
    email_id, (pixel,), (link, unsubscribe) = await _links(pl, fake_mx)
    assert pixel.startswith(f"https://{HOST}/pl/t/o/"), pixel
    assert link.startswith(f"https://{HOST}/pl/t/c/"), link
    # The proxy serving the host passes /t/... on, with the host's name as Host.
    assert unsubscribe.startswith(f"https://{HOST}/pl/t/u/"), unsubscribe
    for url, status in ((pixel, 200), (link, 302), (unsubscribe, 200)):
        path = urlsplit(url).path.removeprefix("/pl")
        answer = await pl.client.get(path, headers={"Host": HOST, "User-Agent": "Reader/2"})
        assert answer.status_code == status, answer.text
    one_click = await pl.client.post(
        urlsplit(unsubscribe).path.removeprefix("/pl"),
        data={"List-Unsubscribe": "One-Click"},
        headers={"Host": HOST},
    )
    assert one_click.status_code == 200, one_click.text
    clicked = await pl.client.get("/v1/events", params={"type": "email.clicked"}, headers=pl.auth())
    assert [(e["data"]["email_id"], e["data"]["url"]) for e in clicked.json()["data"]] == [
        (email_id, TARGET)
    ]

    # A proxy with on-demand TLS asks before it gets a certificate for a name.
    asked = await pl.client.get("/t/tls", params={"domain": HOST.upper()})
    assert (asked.status_code, asked.json()) == (200, {"host": HOST})
    for name in ("example.test", "other.example.test", "not a name", "x" * 253):
        refused = await pl.client.get("/t/tls", params={"domain": name})
        assert refused.status_code == 404, (name, refused.text)

    # Another host starts unchecked again.
    moved = await _patch(pl, domain["id"], host="t2.example.test")
    (record,) = [r for r in moved.json()["dns_records"] if r["purpose"] == "tracking"]
    assert (record["name"], "status" in record) == ("t2.example.test", False)
    # (reader@ unsubscribed above: another reader.)
    _, (pixel,), _ = await _links(pl, fake_mx, "second@dest.test")
    assert pixel.startswith(f"{BASE}/t/o/"), pixel

    # Removed: the CNAME goes, links use POSTLINE_TRACKING_URL again.
    cleared = await _patch(pl, domain["id"], host=None)
    assert cleared.json()["tracking"]["host"] is None
    assert "tracking" not in {r["purpose"] for r in cleared.json()["dns_records"]}
    _, (pixel,), (link, _) = await _links(pl, fake_mx, "third@dest.test")
    assert pixel.startswith(f"{BASE}/t/o/") and link.startswith(f"{BASE}/t/c/")
    assert (await pl.client.get("/t/tls", params={"domain": HOST})).status_code == 404


async def test_a_tracking_host_must_be_a_free_name_under_the_domain(
    pl: PostlineUnderTest,
) -> None:
    domain = await _domain(pl)
    made = await pl.client.post("/v1/domains", json={"name": "sub.example.test"}, headers=pl.auth())
    assert made.status_code == 201, made.text
    sub = made.json()
    assert (await _patch(pl, sub["id"], host="t.sub.example.test")).status_code == 200
    route = {"match": "*@in.example.test"}
    assert (
        await pl.client.post("/v1/inbound-routes", json=route, headers=pl.auth())
    ).status_code == 201
    for host, status in (
        ("example.test", 422),  # the domain itself: a CNAME cannot stand beside its MX
        ("track.elsewhere.test", 422),
        ("trackexample.test", 422),
        ("bounces.example.test", 422),  # the return path's MX is there
        ("in.example.test", 422),  # an inbound route's MX is there
        ("not a host", 422),
        ("t.sub.example.test", 409),  # sub.example.test's
    ):
        answer = await _patch(pl, domain["id"], host=host)
        assert answer.status_code == status, (host, answer.text)
        if status == 422:
            assert answer.json()["errors"][0]["field"] == "tracking.host", answer.text
    unchanged = await _domain(pl)
    assert unchanged["tracking"]["host"] is None
    # Setting opens or clicks leaves the host as it is.
    assert (await _patch(pl, sub["id"], clicks=True)).json()["tracking"] == {
        "opens": False,
        "clicks": True,
        "host": "t.sub.example.test",
    }


async def test_two_domains_asking_for_one_host_at_once_get_one_200_and_one_409(
    pl: PostlineUnderTest,
) -> None:
    parent = await _domain(pl)
    made = await pl.client.post("/v1/domains", json={"name": "sub.example.test"}, headers=pl.auth())
    assert made.status_code == 201, made.text
    answers = await asyncio.gather(
        *(_patch(pl, d, host="t.sub.example.test") for d in (parent["id"], made.json()["id"]))
    )
    assert sorted(a.status_code for a in answers) == [200, 409], [a.text for a in answers]
