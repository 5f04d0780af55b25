"""A tracked email to several recipients: one body each, whose tokens name that recipient.

Through the HTTP API, delivered to the fake MX, on each spool (files on SQLite and on
PostgreSQL, the database spool on PostgreSQL). Each copy's pixel and link are fetched
as that recipient's mail program would, and the events must name that recipient only.
"""

from __future__ import annotations

import email
import email.policy
import re
from datetime import timedelta
from typing import Any

import dkim
import pytest_asyncio
from sqlalchemy import select

from postline.retention import free_bodies, purge_emails
from postline.spool.base import SpoolMissing, copy_ref
from postline.store.schema import sent_emails
from postline.store.types import utcnow
from tests.harness import FakeDNS, FakeMX
from tests.harness.polling import poll
from tests.harness.postline import Factory, PostlineUnderTest
from tests.integration.test_dkim_delivery import _dns_via
from tests.integration.test_retention import all_dispatched, topology
from tests.integration.test_tracking import _html_of, _path

BASE = "http://postline"
TARGET = "https://shop.example/orders?id=42"
HTML = f'<html><body><p>Your order: <a href="{TARGET}">view</a></p></body></html>'
ADA, BOB, CY = "ada@dest.test", "bob@other.test", "cy@dest.test"
#: To, cc and bcc; two destinations, two of the recipients at one of them.
SEVERAL: dict[str, Any] = {"to": [ADA], "cc": [BOB], "bcc": [CY]}
__all__ = ["topology"]  # the fixture, shared with test_retention


@pytest_asyncio.fixture
async def pl(postline_factory: Factory, topology: dict[str, Any]) -> PostlineUnderTest:
    return await postline_factory(tracking_url=BASE, **topology)


def _copies(fake_mx: FakeMX, sent: dict[str, Any]) -> dict[str, bytes]:
    """Each recipient's copy as the MX received it; each transaction had one recipient."""
    received = [m for m in fake_mx.received if sent["message_id"].encode() in m.data]
    assert all(len(m.rcpt_tos) == 1 for m in received), [m.rcpt_tos for m in received]
    copies = {m.rcpt_tos[0]: m.data for m in received}
    assert len(copies) == len(received)  # nobody got two
    return copies


async def _events(pl: PostlineUnderTest, event_type: str, email_id: str) -> list[Any]:
    response = await pl.client.get("/v1/events", params={"type": event_type}, headers=pl.auth())
    assert response.status_code == 200, response.text
    return [e for e in response.json()["data"] if e["data"]["email_id"] == email_id]


async def _bodies_column(pl: PostlineUnderTest, email_id: str) -> int:
    async with pl.services.db.read() as conn:
        statement = select(sent_emails.c.bodies).where(sent_emails.c.id == email_id)
        return int((await conn.execute(statement)).scalar_one())


async def _kept(pl: PostlineUnderTest, ref: str) -> bool:
    try:
        await pl.services.spool.get(ref)
    except SpoolMissing:
        return False
    return True


async def test_each_recipient_opens_and_clicks_its_own_copy(
    pl: PostlineUnderTest, fake_mx: FakeMX, fake_dns: FakeDNS
) -> None:
    domains = (await pl.client.get("/v1/domains", headers=pl.auth())).json()["data"]
    (record,) = [r for r in domains[0]["dns_records"] if r["purpose"] == "dkim"]
    fake_dns.add_txt(record["name"], record["value"])
    sent = await pl.send(**SEVERAL, html=HTML, track={"opens": True, "clicks": True})
    email_id = sent["id"]
    await pl.wait_for_status(email_id, ["delivered"])
    copies = _copies(fake_mx, sent)
    assert set(copies) == {ADA, BOB, CY}
    pixels: dict[str, str] = {}
    links: dict[str, str] = {}
    for address, raw in copies.items():
        # Each copy signed on its own, and dkimpy verifies it.
        assert dkim.verify(raw, dnsfunc=_dns_via(fake_dns)), address
        assert b"\nBcc:" not in raw and CY.encode() not in raw.split(b"\r\n\r\n")[0]
        html = _html_of(raw)
        assert "shop.example" not in html
        ((pixels[address],), (links[address],)) = (
            re.findall(r'<img src="([^"]+)"', html),
            re.findall(r'<a href="([^"]+)"', html),
        )
    assert len(set(pixels.values())) == 3 and len(set(links.values())) == 3

    # Bob reads: one open, his, and nobody else's.
    pixel = await pl.client.get(_path(pixels[BOB]), headers={"User-Agent": "Bob/1.0"})
    assert pixel.status_code == 200
    (opened,) = await _events(pl, "email.opened", email_id)
    assert (opened["data"]["recipient"], opened["data"]["user_agent"]) == (BOB, "Bob/1.0")

    # Each clicks its own link: one click each, naming each.
    for address, link in links.items():
        click = await pl.client.get(_path(link), headers={"User-Agent": f"{address}/1"})
        assert click.status_code == 302 and click.headers["location"] == TARGET
    clicks = await _events(pl, "email.clicked", email_id)
    assert sorted(c["data"]["recipient"] for c in clicks) == sorted([ADA, BOB, CY])
    assert all(c["data"]["user_agent"] == f"{c['data']['recipient']}/1" for c in clicks)
    assert all(c["data"]["url"] == TARGET for c in clicks)

    # The email's detail puts each event on its recipient; nobody's status moved.
    detail = await pl.email(email_id)
    tracked = [(e["type"], e["recipient"]) for e in detail["events"] if "ed" in e["type"]]
    assert ("email.opened", BOB) in tracked
    assert [e for e in tracked if e[0] == "email.opened"] == [("email.opened", BOB)]
    assert {r["status"] for r in detail["recipients"]} == {"delivered"}

    # The content endpoint: the first recipient's copy, or the one asked for.
    assert await _bodies_column(pl, email_id) == 3
    for address, query in ((ADA, {}), (BOB, {"recipient": BOB}), (CY, {"recipient": CY})):
        content = await pl.client.get(
            f"/v1/emails/{email_id}/content", params=query, headers=pl.auth()
        )
        assert content.status_code == 200, content.text
        assert pixels[address] in _html_of(content.content)
    missing = await pl.client.get(
        f"/v1/emails/{email_id}/content", params={"recipient": "eve@dest.test"}, headers=pl.auth()
    )
    assert missing.status_code == 404, missing.text

    # Retention frees every copy together once the email is final.
    refs = [copy_ref(email_id, position) for position in range(3)]
    assert [await _kept(pl, ref) for ref in refs] == [True, True, True]
    assert await free_bodies(pl.services.db, pl.services.spool, utcnow(), 0) == 1
    assert [await _kept(pl, ref) for ref in refs] == [False, False, False]


async def test_an_untracked_email_to_several_is_one_body_and_one_transaction(
    pl: PostlineUnderTest, fake_mx: FakeMX
) -> None:
    sent = await pl.send(to=[ADA, CY], html=HTML, text="hi")
    await pl.wait_for_status(sent["id"], ["delivered"])
    (received,) = [m for m in fake_mx.received if sent["message_id"].encode() in m.data]
    assert sorted(received.rcpt_tos) == [ADA, CY]
    # The link as written, in the decoded part: b"/t/" in the raw message also matched
    # the DKIM signature's base64 now and then.
    assert f'href="{TARGET}"' in _html_of(received.data)
    assert BASE + "/t/" not in _html_of(received.data)
    assert await _bodies_column(pl, sent["id"]) == 1
    assert await _kept(pl, sent["id"])
    assert not await _kept(pl, copy_ref(sent["id"], 1))


async def test_one_click_unsubscribe_suppresses_only_who_clicked(
    pl: PostlineUnderTest, fake_mx: FakeMX
) -> None:
    sent = await pl.send(to=[ADA, BOB], text="hi", unsubscribe=True)
    email_id = sent["id"]
    await pl.wait_for_status(email_id, ["delivered"])
    urls = {}
    for address, raw in _copies(fake_mx, sent).items():
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        (urls[address],) = re.findall(r"<([^>]+)>", str(message["List-Unsubscribe"]))
    assert set(urls) == {ADA, BOB} and urls[ADA] != urls[BOB]

    done = await pl.client.post(_path(urls[BOB]), content=b"List-Unsubscribe=One-Click")
    assert done.status_code == 200, done.text
    (event,) = await _events(pl, "email.unsubscribed", email_id)
    assert event["data"]["recipient"] == BOB
    for address, listed in ((BOB, 1), (ADA, 0)):
        found = await pl.client.get(
            "/v1/suppressions", params={"address": address}, headers=pl.auth()
        )
        assert len(found.json()["data"]) == listed, (address, found.text)
    again = await pl.send(to=[ADA, BOB])
    assert again["recipients"] == [
        {"address": ADA, "status": "queued"},
        {"address": BOB, "status": "suppressed"},
    ]


async def test_a_failed_transaction_defers_the_copies_not_sent_yet(
    pl: PostlineUnderTest, fake_mx: FakeMX
) -> None:
    # One destination: one job, a transaction per copy. The first MAIL is refused
    # for the whole transaction, the later ones taken.
    fake_mx.on_mail("421 4.3.2 busy, try later", "250 2.1.0 OK")
    sent = await pl.send(
        to=["a@dest.test", "b@dest.test", "c@dest.test"], html=HTML, track={"opens": True}
    )
    detail = await pl.wait_until_final(sent["id"])
    assert {r["status"] for r in detail["recipients"]} == {"delivered"}
    for recipient in detail["recipients"]:
        steps = [(t["status"], t["smtp_code"]) for t in recipient["timeline"]]
        assert steps == [("deferred", 421), ("delivered", 250)], recipient
    assert sorted(_copies(fake_mx, sent)) == ["a@dest.test", "b@dest.test", "c@dest.test"]


async def test_a_batch_gives_copies_to_the_tracked_emails_only(
    pl: PostlineUnderTest, fake_mx: FakeMX
) -> None:
    one = {"from": "sender@example.test", "subject": "Hi", "html": HTML}
    response = await pl.client.post(
        "/v1/emails/batch",
        json=[
            {**one, "to": [ADA, CY], "track": {"clicks": True}},
            {**one, "to": ["dan@dest.test", "eve@dest.test"]},
        ],
        headers=pl.auth(),
    )
    assert response.status_code == 202, response.text
    tracked, plain = response.json()["data"]
    for sent in (tracked, plain):
        await pl.wait_for_status(sent["id"], ["delivered"])
    assert sorted(_copies(fake_mx, tracked)) == [ADA, CY]
    (together,) = [m for m in fake_mx.received if plain["message_id"].encode() in m.data]
    assert sorted(together.rcpt_tos) == ["dan@dest.test", "eve@dest.test"]
    assert (await _bodies_column(pl, tracked["id"]), await _bodies_column(pl, plain["id"])) == (
        2,
        1,
    )


async def test_a_template_send_gives_each_recipient_its_copy(
    pl: PostlineUnderTest, fake_mx: FakeMX
) -> None:
    template = await pl.client.post(
        "/v1/templates",
        json={
            "name": "order",
            "subject": "Order {{ n }}",
            "html": f'<p>Order {{{{ n }}}}: <a href="{TARGET}">view</a></p>',
        },
        headers=pl.auth(),
    )
    assert template.status_code == 201, template.text
    sent = await pl.send(
        to=[ADA],
        bcc=[BOB],
        template={"id": template.json()["id"], "variables": {"n": "42"}},
        track={"clicks": True},
        text=None,
        subject=None,
    )
    await pl.wait_for_status(sent["id"], ["delivered"])
    clicked: list[str] = []
    for address, raw in _copies(fake_mx, sent).items():
        (link,) = re.findall(r'<a href="([^"]+)"', _html_of(raw))
        assert "Order 42" in _html_of(raw)
        assert (await pl.client.get(_path(link))).status_code == 302
        clicked.append(address)
        clicks = await _events(pl, "email.clicked", sent["id"])
        assert sorted(c["data"]["recipient"] for c in clicks) == sorted(clicked)
    assert sorted(clicked) == sorted([ADA, BOB])


async def test_copies_too_heavy_together_are_a_413_and_nothing_is_kept(
    postline_factory: Factory,
) -> None:
    # Copies may weigh 4 times the largest message together: 10 of 10 KB pass the
    # message limit (20 KB) one by one, not together.
    pl = await postline_factory(engine=False, tracking_url=BASE, max_message_bytes=20_000)
    recipients = [f"r{i}@dest.test" for i in range(10)]
    heavy = "<html><body>" + "x" * 10_000 + "</body></html>"
    body = {"from": "sender@example.test", "to": recipients, "subject": "Hi", "html": heavy}
    refused = await pl.client.post(
        "/v1/emails", json={**body, "track": {"opens": True}}, headers=pl.auth()
    )
    assert refused.status_code == 413, refused.text
    assert refused.json()["errors"][0]["field"] == "track"
    assert await pl.services.spool.refs_older_than(utcnow() + timedelta(seconds=5)) == []
    # Untracked, the same email is one body: accepted.
    accepted = await pl.client.post("/v1/emails", json=body, headers=pl.auth())
    assert accepted.status_code == 202, accepted.text


async def test_the_purge_of_a_tracked_email_takes_every_copy(
    pl: PostlineUnderTest, fake_mx: FakeMX
) -> None:
    sent = await pl.send(to=[ADA, BOB], html=HTML, track={"opens": True})
    detail = await pl.wait_until_final(sent["id"])
    assert {r["status"] for r in detail["recipients"]} == {"delivered"}
    await poll(lambda: all_dispatched(pl), timeout=15, what="every event fanned out")
    await pl.stop_engine()
    refs = [sent["id"], copy_ref(sent["id"], 1)]
    assert [await _kept(pl, ref) for ref in refs] == [True, True]
    later = utcnow() + timedelta(days=31)
    assert await purge_emails(pl.services.db, pl.services.spool, later, 30) == 1
    assert [await _kept(pl, ref) for ref in refs] == [False, False]
