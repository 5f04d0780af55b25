"""Inbound routes: mail to a routed address, sent with smtplib to the real inbound
listener, arrives at a real webhook receiver as ``email.received`` and in the event feed,
and its raw download matches byte for byte; unrouted addresses are refused at RCPT."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
import pytest_asyncio

from postline.app import inbound_listener
from postline.inbound.listener import InboundListener
from postline.retention import retention_pass
from postline.store.types import utcnow
from tests.harness.postline import Factory, PostlineUnderTest
from tests.harness.receiver import WebhookReceiver

MESSAGE = (
    b"From: Customer <customer@far.test>\r\n"
    b"To: Support <support@in.example.test>\r\n"
    b"Cc: boss@far.test\r\n"
    b"Subject: =?utf-8?q?Need_h=C3=A9lp?=\r\n"
    b"Message-ID: <q1@far.test>\r\n"
    b"Authentication-Results: mx.far.test; spf=pass smtp.mailfrom=far.test\r\n"
    b"Received-SPF: pass (far.test: 127.0.0.1 is allowed)\r\n"
    b"DKIM-Signature: v=1; a=rsa-sha256; d=far.test; s=s1; b=AAAA\r\n"
    b"X-Spam-Score: 0.4\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="outer"\r\n'
    b"\r\n"
    b"--outer\r\n"
    b'Content-Type: multipart/alternative; boundary="alt"\r\n'
    b"\r\n"
    b"--alt\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"My order is late.\r\n"
    b".a line that starts with a dot\r\n"
    b"--alt\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"\r\n"
    b"<p>My order is late.</p>\r\n"
    b"--alt--\r\n"
    b"--outer\r\n"
    b"Content-Type: application/pdf\r\n"
    b'Content-Disposition: attachment; filename="invoice.pdf"\r\n'
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"JVBERi0xLjQK\r\n"
    b"--outer--\r\n"
)


@pytest_asyncio.fixture
async def pl(postline_factory: Factory, database_url: str) -> PostlineUnderTest:
    """On SQLite and on PostgreSQL (``database_url`` is parametrized over both)."""
    return await postline_factory(
        database_url=database_url,
        domains=("example.test", "other.test"),
        webhook_allow_private=True,
    )


@pytest_asyncio.fixture
async def inbound(pl: PostlineUnderTest) -> AsyncIterator[InboundListener]:
    listener = inbound_listener(pl.services, "127.0.0.1", 0)
    await listener.start()
    yield listener
    await listener.stop()


def _smtp_send(port: int, rcpt: str, data: bytes) -> dict[str, Any]:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="mx.far.test", timeout=30) as smtp:
        refused: dict[str, Any] = smtp.sendmail("customer@far.test", [rcpt], data)
        return refused


async def mail(listener: InboundListener, rcpt: str, data: bytes = MESSAGE) -> None:
    await asyncio.to_thread(_smtp_send, listener.port, rcpt, data)


async def route(pl: PostlineUnderTest, match: str, key: str | None = None) -> dict[str, Any]:
    response = await pl.client.post(
        "/v1/inbound-routes", json={"match": match, "events": True}, headers=pl.auth(key)
    )
    assert response.status_code == 201, response.text
    made: dict[str, Any] = response.json()
    return made


async def key(pl: PostlineUnderTest, domain: str, scopes: list[str]) -> str:
    body = {"name": f"{domain} key", "domain": domain, "scopes": scopes}
    response = await pl.client.post("/v1/api-keys", json=body, headers=pl.auth())
    assert response.status_code == 201, response.text
    made: str = response.json()["key"]
    return made


async def test_routed_mail_arrives_as_email_received_with_a_raw_download_that_matches(
    pl: PostlineUnderTest, inbound: InboundListener, receiver: WebhookReceiver
) -> None:
    made = await route(pl, "Support@In.Example.test")
    assert (made["match"], made["domain"], made["events"]) == (
        "support@in.example.test",
        "example.test",
        True,
    )
    assert made["mx"]["name"] == "in.example.test"
    hook = {"url": receiver.url, "events": ["email.received"], "domain": "example.test"}
    assert (await pl.client.post("/v1/webhooks", json=hook, headers=pl.auth())).status_code == 201

    await mail(inbound, "support@in.example.test")

    (received,) = await receiver.wait_until(lambda hs: len(hs) >= 1, what="email.received")
    assert received.json["type"] == "email.received"
    data = received.json["data"]
    assert data["route_id"] == made["id"]
    assert (data["mail_from"], data["rcpt_to"]) == ("customer@far.test", "support@in.example.test")
    assert data["from"] == "customer@far.test"
    assert (data["to"], data["cc"]) == (["support@in.example.test"], ["boss@far.test"])
    assert data["subject"] == "Need hélp"
    assert data["text"] == "My order is late.\n.a line that starts with a dot"
    assert data["html"] == "<p>My order is late.</p>"
    assert [(a["filename"], a["content_type"], a["size"]) for a in data["attachments"]] == [
        ("invoice.pdf", "application/pdf", 9)
    ]
    headers = data["headers"]
    assert headers["authentication-results"] == ["mx.far.test; spf=pass smtp.mailfrom=far.test"]
    assert headers["received-spf"] == ["pass (far.test: 127.0.0.1 is allowed)"]
    assert headers["dkim_signature"] is True
    assert headers["x_spam"] == {"x-spam-score": "0.4"}
    assert data["size"] == len(MESSAGE)

    # The raw download, with a read key of the domain: the bytes as they came.
    reader = await key(pl, "example.test", ["read"])
    raw = await pl.client.get(data["raw_url"], headers=pl.auth(reader))
    assert raw.status_code == 200, raw.text
    assert raw.headers["content-type"] == "message/rfc822"
    assert raw.content == MESSAGE
    # Another domain's key sees nothing of it.
    stranger = await key(pl, "other.test", ["read"])
    hidden = await pl.client.get(data["raw_url"], headers=pl.auth(stranger))
    assert hidden.status_code == 404, hidden.text

    # The event feed lists it, as the webhook carried it.
    feed = await pl.client.get("/v1/events", params={"type": "email.received"}, headers=pl.auth())
    assert feed.status_code == 200, feed.text
    (listed,) = feed.json()["data"]
    assert listed["id"] == received.headers["webhook-id"]
    assert listed["email_id"] is None
    assert listed["data"]["inbound_id"] == data["inbound_id"]

    # The domain's DNS records name the MX to publish for the routed domain.
    domains = (await pl.client.get("/v1/domains", headers=pl.auth())).json()["data"]
    (example,) = [d for d in domains if d["name"] == "example.test"]
    detail = (await pl.client.get(f"/v1/domains/{example['id']}", headers=pl.auth())).json()
    mx = [r for r in detail["dns_records"] if r["purpose"] == "inbound"]
    hostname = pl.services.settings.hostname
    assert mx == [
        {"type": "MX", "name": "in.example.test", "value": f"10 {hostname}", "purpose": "inbound"}
    ]


async def test_an_unrouted_address_is_refused_at_rcpt_and_a_wildcard_takes_any(
    pl: PostlineUnderTest, inbound: InboundListener
) -> None:
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        await mail(inbound, "sales@in.example.test")
    assert refused.value.recipients["sales@in.example.test"][0] == 550
    assert b"5.1.1" in refused.value.recipients["sales@in.example.test"][1]

    wildcard = await route(pl, "*@in.example.test")
    await mail(inbound, "sales@in.example.test")
    listed = (await pl.client.get("/v1/inbound-routes", headers=pl.auth())).json()["data"]
    assert [r["id"] for r in listed] == [wildcard["id"]]

    gone = await pl.client.delete(f"/v1/inbound-routes/{wildcard['id']}", headers=pl.auth())
    assert gone.status_code == 204, gone.text
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        await mail(inbound, "sales@in.example.test")


async def test_routes_are_scoped_like_domains(pl: PostlineUnderTest) -> None:
    admin_other = await key(pl, "other.test", ["admin"])
    refused = await pl.client.post(
        "/v1/inbound-routes", json={"match": "a@example.test"}, headers=pl.auth(admin_other)
    )
    assert refused.status_code == 403, refused.text
    own = await route(pl, "help@other.test", admin_other)
    assert own["domain"] == "other.test"
    theirs = await route(pl, "help@example.test")
    hidden = await pl.client.get(f"/v1/inbound-routes/{theirs['id']}", headers=pl.auth(admin_other))
    assert hidden.status_code == 404, hidden.text
    listed = await pl.client.get("/v1/inbound-routes", headers=pl.auth(admin_other))
    assert [r["id"] for r in listed.json()["data"]] == [own["id"]]

    for body, status in (
        ({"match": "help@example.test"}, 409),
        ({"match": "x@unknown.test"}, 422),
        ({"match": "not an address"}, 422),
        ({"match": "*@"}, 422),
    ):
        answer = await pl.client.post("/v1/inbound-routes", json=body, headers=pl.auth())
        assert answer.status_code == status, (body, answer.text)
    reader = await key(pl, "other.test", ["read"])
    no_scope = await pl.client.get("/v1/inbound-routes", headers=pl.auth(reader))
    assert no_scope.status_code == 403, no_scope.text


async def test_a_route_without_events_keeps_the_mail_quietly_and_retention_forgets_it(
    pl: PostlineUnderTest, inbound: InboundListener
) -> None:
    body = {"match": "quiet@example.test", "events": False}
    made = await pl.client.post("/v1/inbound-routes", json=body, headers=pl.auth())
    assert made.status_code == 201, made.text
    reply = await asyncio.to_thread(_smtp_reply, inbound.port, "quiet@example.test")
    inbound_id = reply.rpartition(" ")[2]
    assert inbound_id.startswith("inm_"), reply
    raw = await pl.client.get(f"/v1/inbound/{inbound_id}/raw", headers=pl.auth())
    assert raw.content == MESSAGE
    feed = await pl.client.get("/v1/events", params={"type": "email.received"}, headers=pl.auth())
    assert feed.json()["data"] == []

    later = utcnow() + timedelta(days=31)
    await retention_pass(
        pl.services.db, pl.services.spool, later, body_retention_seconds=0, retention_days=30
    )
    gone = await pl.client.get(f"/v1/inbound/{inbound_id}/raw", headers=pl.auth())
    assert gone.status_code == 404, gone.text


def _smtp_reply(port: int, rcpt: str) -> str:
    """The listener's answer to DATA, which names the stored message."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname="mx.far.test", timeout=30) as smtp:
        smtp.ehlo()
        smtp.mail("customer@far.test")
        smtp.rcpt(rcpt)
        code, answer = smtp.data(MESSAGE)
        assert code == 250, answer
        return answer.decode()


async def test_received_mail_is_listed_and_read_as_its_event_said_scoped_by_domain(
    pl: PostlineUnderTest, inbound: InboundListener, receiver: WebhookReceiver
) -> None:
    await route(pl, "support@in.example.test")
    await route(pl, "help@other.test")
    hook = {"url": receiver.url, "events": ["email.received"], "domain": "example.test"}
    assert (await pl.client.post("/v1/webhooks", json=hook, headers=pl.auth())).status_code == 201
    for _ in range(3):
        await mail(inbound, "support@in.example.test")
    other = MESSAGE.replace(b"Need_h=C3=A9lp", b"Other_domain_private")
    await mail(inbound, "help@other.test", other)
    hooks = await receiver.wait_until(lambda hs: len(hs) >= 3, what="three email.received")
    events = {h.json["data"]["inbound_id"]: h.json["data"] for h in hooks}

    # A read key of example.test pages through its three, newest first, and no other.
    reader = await key(pl, "example.test", ["read"])
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = await pl.client.get("/v1/inbound", params=params, headers=pl.auth(reader))
        assert page.status_code == 200, page.text
        seen += page.json()["data"]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert [m["id"] for m in seen] == sorted(events, reverse=True)
    first = seen[0]
    assert first["object"] == "inbound_message"
    assert (first["domain"], first["mail_from"], first["rcpt_to"]) == (
        "example.test",
        "customer@far.test",
        "support@in.example.test",
    )
    assert (first["from"], first["to"], first["subject"]) == (
        "customer@far.test",
        ["support@in.example.test"],
        "Need hélp",
    )
    assert (first["size"], first["raw_url"]) == (len(MESSAGE), f"/v1/inbound/{first['id']}/raw")

    # One message: the fields of its email.received event, parsed again from the bytes.
    detail = await pl.client.get(f"/v1/inbound/{first['id']}", headers=pl.auth(reader))
    assert detail.status_code == 200, detail.text
    body = detail.json()
    assert (body.pop("object"), body.pop("id")) == ("inbound_message", first["id"])
    assert body == events[first["id"]]

    # The admin key sees both domains, and filters by one; another domain's key gets
    # the other's message only, and the same 403 for a domain not its own.
    everything = await pl.client.get("/v1/inbound", headers=pl.auth())
    assert len(everything.json()["data"]) == 4
    filtered = await pl.client.get(
        "/v1/inbound", params={"domain": "other.test"}, headers=pl.auth()
    )
    (theirs,) = filtered.json()["data"]
    assert theirs["subject"] == "Other domain private"
    stranger = await key(pl, "other.test", ["read"])
    listed = await pl.client.get("/v1/inbound", headers=pl.auth(stranger))
    assert [m["id"] for m in listed.json()["data"]] == [theirs["id"]]
    named = await pl.client.get(
        "/v1/inbound", params={"domain": "example.test"}, headers=pl.auth(stranger)
    )
    assert named.status_code == 403, named.text
    hidden = await pl.client.get(f"/v1/inbound/{first['id']}", headers=pl.auth(stranger))
    assert hidden.status_code == 404, hidden.text
    # A key without the read scope lists nothing.
    sender = await key(pl, "example.test", ["send"])
    refused = await pl.client.get("/v1/inbound", headers=pl.auth(sender))
    assert refused.status_code == 403, refused.text


async def test_a_message_that_does_not_parse_is_still_listed_and_read(
    pl: PostlineUnderTest, inbound: InboundListener
) -> None:
    await route(pl, "odd@example.test")
    odd = b"Subject: \xff\xfe broken\r\nContent-Type: multipart/mixed\r\n\r\nno boundary\r\n"
    await mail(inbound, "odd@example.test", odd)
    (listed,) = (await pl.client.get("/v1/inbound", headers=pl.auth())).json()["data"]
    assert listed["from"] is None and listed["to"] == []
    detail = await pl.client.get(f"/v1/inbound/{listed['id']}", headers=pl.auth())
    assert detail.status_code == 200, detail.text
    assert detail.json()["size"] == len(odd)
