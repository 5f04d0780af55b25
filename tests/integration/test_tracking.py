"""Opt-in open and click tracking and one-click unsubscribe, through the HTTP API.

The message is taken from the fake MX as sent; its pixel and link are fetched with
the app's own client, as a reader's mail program would fetch them.
"""

from __future__ import annotations

import email
import email.policy
import re
from typing import Any
from urllib.parse import urlsplit

import pytest_asyncio

from postline.message import Content, build_message
from tests.harness import FakeMX
from tests.harness.postline import Factory, PostlineUnderTest
from tests.harness.receiver import Hook, WebhookReceiver

BASE = "http://postline"
TARGET = "https://shop.example/orders?id=42&ref=mail#top"
LINK = TARGET.replace("&", "&amp;")
HTML = f'<html><body><p>Your order: <a href="{LINK}">view</a></p></body></html>'


@pytest_asyncio.fixture
async def pl(postline_factory: Factory, database_url: str) -> PostlineUnderTest:
    """On both stores (``database_url``: SQLite and PostgreSQL)."""
    return await postline_factory(
        database_url=database_url, tracking_url=BASE, webhook_allow_private=True
    )


def _html_of(raw: bytes) -> str:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    part = message.get_body(("html",))
    assert part is not None
    return str(part.get_content())


def _path(url: str) -> str:
    assert url.startswith(BASE + "/t/"), url
    return urlsplit(url).path


async def _events(pl: PostlineUnderTest, event_type: str, email_id: str) -> list[Any]:
    response = await pl.client.get("/v1/events", params={"type": event_type}, headers=pl.auth())
    assert response.status_code == 200, response.text
    return [e for e in response.json()["data"] if e["data"]["email_id"] == email_id]


async def _delivered(pl: PostlineUnderTest, fake_mx: FakeMX, **body: Any) -> tuple[str, bytes]:
    sent = await pl.send(to=["reader@dest.test"], **body)
    await pl.wait_for_status(sent["id"], ["delivered"])
    (received,) = [m for m in fake_mx.received if sent["message_id"].encode() in m.data]
    return sent["id"], received.data


async def test_a_tracked_send_records_one_open_and_one_click_per_fetch(
    pl: PostlineUnderTest, fake_mx: FakeMX, receiver: WebhookReceiver
) -> None:
    hook = await pl.client.post(
        "/v1/webhooks", json={"url": receiver.url, "events": ["*"]}, headers=pl.auth()
    )
    assert hook.status_code == 201, hook.text
    email_id, raw = await _delivered(pl, fake_mx, html=HTML, track={"opens": True, "clicks": True})
    html = _html_of(raw)
    assert "shop.example" not in html  # the link is rewritten, nothing of it in clear
    (pixel_url,) = re.findall(r'<img src="([^"]+)"', html)
    (link_url,) = re.findall(r'<a href="([^"]+)"', html)

    pixel = await pl.client.get(_path(pixel_url), headers={"User-Agent": "Reader/1.0"})
    assert pixel.status_code == 200
    assert pixel.headers["content-type"] == "image/gif"
    assert "no-store" in pixel.headers["cache-control"]
    assert pixel.content.startswith(b"GIF89a")
    click = await pl.client.get(_path(link_url), headers={"User-Agent": "Reader/1.0"})
    assert click.status_code == 302
    assert click.headers["location"] == TARGET

    (opened,) = await _events(pl, "email.opened", email_id)
    (clicked,) = await _events(pl, "email.clicked", email_id)
    assert opened["data"]["recipient"] == "reader@dest.test"
    assert opened["data"]["user_agent"] == "Reader/1.0"
    assert opened["data"]["machine"] is False
    assert clicked["data"]["url"] == TARGET
    assert clicked["data"]["recipient"] == "reader@dest.test"
    detail = await pl.email(email_id)
    assert [r["status"] for r in detail["recipients"]] == ["delivered"]

    def tracked(hooks: list[Hook]) -> set[str]:
        return {h.json["type"] for h in hooks if h.json["data"].get("email_id") == email_id}

    await receiver.wait_until(
        lambda hs: {"email.opened", "email.clicked"} <= tracked(hs), what="tracking webhooks"
    )

    # An image proxy's fetch is an open too, marked as a machine's.
    proxy = "Mozilla/5.0 (via ggpht.com GoogleImageProxy)"
    await pl.client.get(_path(pixel_url), headers={"User-Agent": proxy})
    opens = await _events(pl, "email.opened", email_id)
    assert [(o["data"]["machine"], o["data"]["machine_by"]) for o in opens] == [
        (False, None),
        (True, "gmail_image_proxy"),
    ]
    # Counted by GET /v1/stats as every other event (the feed numbers them first).
    stats = await pl.client.get("/v1/stats", headers=pl.auth())
    totals = stats.json()["totals"]
    assert (totals["opened"], totals["clicked"], totals["delivered"]) == (2, 1, 1)


async def test_a_tampered_token_is_a_404_and_records_nothing(
    pl: PostlineUnderTest, fake_mx: FakeMX
) -> None:
    email_id, raw = await _delivered(pl, fake_mx, html=HTML, track={"clicks": True})
    (link_url,) = re.findall(r'<a href="([^"]+)"', _html_of(raw))
    path = _path(link_url)
    body, _, mac = path.rpartition(".")
    flipped = mac[:-1] + ("A" if mac[-1] != "A" else "B")
    for bad in (
        f"{body}.{flipped}",
        path.replace("/t/c/", "/t/o/"),  # a click token is no pixel
        "/t/c/forged",
        "/t/c/eyJ1cmwiOiJodHRwczovL2V2aWwuZXhhbXBsZSJ9.AAAA",
    ):
        response = await pl.client.get(bad)
        assert response.status_code == 404, (bad, response.text)
        assert "location" not in response.headers
    assert await _events(pl, "email.clicked", email_id) == []
    assert await _events(pl, "email.opened", email_id) == []


async def test_an_untracked_send_is_byte_identical_to_the_untracked_build(
    pl: PostlineUnderTest, fake_mx: FakeMX
) -> None:
    # The domain asks for tracking; the send turns it off.
    (domain,) = (await pl.client.get("/v1/domains", headers=pl.auth())).json()["data"]
    patched = await pl.client.patch(
        f"/v1/domains/{domain['id']}",
        json={"tracking": {"opens": True, "clicks": True}},
        headers=pl.auth(),
    )
    assert patched.json()["tracking"] == {"opens": True, "clicks": True, "host": None}
    _, raw = await _delivered(
        pl, fake_mx, html=HTML, text="hi", track={"opens": False, "clicks": False}
    )
    message = email.message_from_bytes(raw, policy=email.policy.SMTP)
    content = Content(
        from_name="Sender",
        from_address="sender@example.test",
        to=["reader@dest.test"],
        subject="Hello",
        text="hi",
        html=HTML,
    )
    built = build_message(
        content,
        message_id=str(message["Message-ID"]),
        date=email.utils.parsedate_to_datetime(str(message["Date"])),
    )
    # The MIME boundary is random for each build: the received one stands for it.
    (theirs,) = set(re.findall(rb'boundary="([^"]+)"', raw))
    (ours,) = set(re.findall(rb'boundary="([^"]+)"', built))
    built = built.replace(ours, theirs)
    # What the engine sent, past the DKIM signature it put on top of the build.
    assert raw.endswith(built)
    assert raw[: -len(built)].startswith(b"DKIM-Signature:")
    assert b"/t/" not in raw

    # With the domain's default on, a send that does not say is tracked.
    _, tracked = await _delivered(pl, fake_mx, html=HTML)
    html = _html_of(tracked)
    assert f"{BASE}/t/o/" in html and f"{BASE}/t/c/" in html


async def test_one_click_unsubscribe_suppresses_the_recipient(
    pl: PostlineUnderTest, fake_mx: FakeMX
) -> None:
    email_id, raw = await _delivered(pl, fake_mx, text="hi", unsubscribe=True)
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    (url,) = re.fullmatch(r"<([^>]+)>", str(message["List-Unsubscribe"])).groups()  # type: ignore[union-attr]
    page = await pl.client.get(_path(url))
    assert page.status_code == 200 and 'method="post"' in page.text
    assert await _events(pl, "email.unsubscribed", email_id) == []  # a GET changes nothing

    done = await pl.client.post(_path(url), content=b"List-Unsubscribe=One-Click")
    assert done.status_code == 200, done.text
    (event,) = await _events(pl, "email.unsubscribed", email_id)
    assert event["data"]["recipient"] == "reader@dest.test"
    assert (await pl.client.get("/v1/stats", headers=pl.auth())).json()["totals"][
        "unsubscribed"
    ] == 1
    listed = await pl.client.get(
        "/v1/suppressions", params={"address": "reader@dest.test"}, headers=pl.auth()
    )
    (suppression,) = listed.json()["data"]
    assert suppression["reason"] == "unsubscribe"
    # The next send to that address from the domain is suppressed.
    again = await pl.send(to=["reader@dest.test"])
    assert again["recipients"] == [{"address": "reader@dest.test", "status": "suppressed"}]


async def test_a_batch_tracks_only_the_emails_that_ask(
    pl: PostlineUnderTest, fake_mx: FakeMX
) -> None:
    one = {"from": "sender@example.test", "subject": "Hi", "html": HTML}
    response = await pl.client.post(
        "/v1/emails/batch",
        json=[
            {**one, "to": ["tracked@dest.test"], "track": {"opens": True}},
            {**one, "to": ["plain@dest.test"]},
        ],
        headers=pl.auth(),
    )
    assert response.status_code == 202, response.text
    for sent in response.json()["data"]:
        await pl.wait_for_status(sent["id"], ["delivered"])
    by_recipient = {
        b"tracked" if b"To: tracked@" in m.data else b"plain": m.data for m in fake_mx.received
    }
    assert f'<img src="{BASE}/t/o/' in _html_of(by_recipient[b"tracked"])
    assert "/t/" not in _html_of(by_recipient[b"plain"])
