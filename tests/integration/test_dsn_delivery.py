"""DSNs: the sender's MX receives an RFC 3464 report for each bounced or expired recipient."""

from __future__ import annotations

from datetime import timedelta
from email import message_from_bytes, policy
from email.message import Message
from typing import Any

from postline.keys import create_key
from postline.store import emails as email_store
from tests.faults.scenario import Topology, topology
from tests.harness import FakeDNS, FakeMX, FakeMXFactory
from tests.harness.clock import MovableClock
from tests.harness.postline import Factory, PostlineUnderTest
from tests.harness.receiver import WebhookReceiver

__all__ = ["topology"]  # the fixture, imported for its parameters


async def _listed(pl: PostlineUnderTest, key: str | None = None, **query: str) -> Any:
    response = await pl.client.get("/v1/emails", params=query, headers=pl.auth(key))
    assert response.status_code == 200, response.text
    return response.json()["data"]


async def _with_sender_mx(
    postline_factory: Factory,
    fake_dns: FakeDNS,
    fake_mx_factory: FakeMXFactory,
    port: int,
    **settings: Any,
) -> tuple[PostlineUnderTest, FakeMX]:
    (sender_mx,) = await fake_mx_factory.group("127.0.0.7", port=port)
    fake_dns.add_mx("example.test", (10, "mx.example.test"))
    fake_dns.add_a("mx.example.test", "127.0.0.7")
    return await postline_factory(bounce_notifications=True, **settings), sender_mx


def _status_blocks(report: Message) -> list[Message]:
    status_part = next(
        p for p in report.walk() if p.get_content_type() == "message/delivery-status"
    )
    blocks = status_part.get_payload()
    assert isinstance(blocks, list)
    return [b for b in blocks if isinstance(b, Message)]


async def test_bounces_produce_one_dsn_with_a_block_per_recipient(
    postline_factory: Factory, fake_dns: FakeDNS, fake_mx: FakeMX, fake_mx_factory: FakeMXFactory
) -> None:
    pl, sender_mx = await _with_sender_mx(postline_factory, fake_dns, fake_mx_factory, fake_mx.port)
    fake_mx.on_rcpt("gone@dest.test", "550 5.1.1 <gone@dest.test>: no such user")
    fake_mx.on_rcpt("blocked@dest.test", "554 5.7.1 rejected: Subject: pwned")
    sent = await pl.send(to=["gone@dest.test", "blocked@dest.test", "ok@dest.test"])
    await pl.wait_for_status(sent["id"], ["partially_delivered"])
    (dsn,) = await sender_mx.wait_for_messages(1)
    assert dsn.mail_from == "<>"  # the null sender: a DSN never bounces back
    assert dsn.rcpt_tos == ["sender@example.test"]
    report = message_from_bytes(dsn.data, policy=policy.default)
    assert report.get_content_type() == "multipart/report"
    assert report["Auto-Submitted"] == "auto-replied"
    assert report["Subject"] != "pwned"
    blocks = _status_blocks(report)
    per_recipient = {b["Final-Recipient"]: b for b in blocks[1:]}
    assert set(per_recipient) == {"rfc822; gone@dest.test", "rfc822; blocked@dest.test"}
    assert per_recipient["rfc822; gone@dest.test"]["Status"] == "5.1.1"
    assert per_recipient["rfc822; blocked@dest.test"]["Status"] == "5.7.1"
    assert "Remote-MTA" in per_recipient["rfc822; gone@dest.test"]
    headers = next(p for p in report.walk() if p.get_content_type() == "text/rfc822-headers")
    assert sent["message_id"].encode() in headers.get_payload(decode=True)
    # Counted as accepted mail of its own source, apart from the customer's.
    metrics = (await pl.client.get("/metrics")).text.splitlines()
    accepted = [line for line in metrics if line.startswith("postline_emails_accepted_total")]
    assert sorted(accepted) == [
        'postline_emails_accepted_total{source="api"} 1.0',
        'postline_emails_accepted_total{source="dsn"} 1.0',
    ]


async def test_no_dsn_when_the_domain_switches_them_off(
    postline_factory: Factory, fake_dns: FakeDNS, fake_mx: FakeMX, fake_mx_factory: FakeMXFactory
) -> None:
    pl, sender_mx = await _with_sender_mx(postline_factory, fake_dns, fake_mx_factory, fake_mx.port)
    domains = (await pl.client.get("/v1/domains", headers=pl.auth())).json()["data"]
    patched = await pl.client.patch(
        f"/v1/domains/{domains[0]['id']}", json={"bounce_notifications": False}, headers=pl.auth()
    )
    assert patched.json()["bounce_notifications"] is False
    fake_mx.on_rcpt("gone@dest.test", "550 5.1.1 no such user")
    sent = await pl.send(to="gone@dest.test")
    detail = await pl.wait_for_status(sent["id"], ["bounced"])
    await pl.stop_engine()
    assert sender_mx.received == []
    assert detail["status"] == "bounced"


async def test_an_expired_recipient_gets_a_4_4_7_dsn(
    postline_factory: Factory, fake_dns: FakeDNS, fake_mx: FakeMX, fake_mx_factory: FakeMXFactory
) -> None:
    clock = MovableClock()
    pl, sender_mx = await _with_sender_mx(
        postline_factory, fake_dns, fake_mx_factory, fake_mx.port, clock=clock
    )
    fake_mx.on_rcpt("stuck@dest.test", "451 4.2.1 mailbox busy")
    sent = await pl.send(to="stuck@dest.test")
    await pl.wait_for(
        sent["id"], lambda d: d["recipients"][0]["status"] == "deferred", what="a deferral"
    )
    clock.offset = timedelta(days=6)
    await pl.wait_for_status(sent["id"], ["failed"])
    (dsn,) = await sender_mx.wait_for_messages(1)
    report = message_from_bytes(dsn.data, policy=policy.default)
    (block,) = _status_blocks(report)[1:]
    assert block["Status"] == "4.4.7"
    assert block["Action"] == "failed"


async def test_a_bouncing_dsn_never_produces_another(
    postline_factory: Factory, fake_dns: FakeDNS, fake_mx: FakeMX, fake_mx_factory: FakeMXFactory
) -> None:
    pl, sender_mx = await _with_sender_mx(postline_factory, fake_dns, fake_mx_factory, fake_mx.port)
    sender_mx.on_rcpt("sender@example.test", "550 5.1.1 no such sender")
    fake_mx.on_rcpt("gone@dest.test", "550 5.1.1 no such user")
    sent = await pl.send(to="gone@dest.test")
    await pl.wait_for_status(sent["id"], ["bounced"])
    # Wait until the DSN itself has bounced at the sender's MX.
    detail = await pl.wait_for(
        sent["id"],
        lambda d: [n["status"] for n in d["notifications"]] == ["bounced"],
        what="the DSN bouncing",
    )
    await pl.stop_engine()
    assert [e["id"] for e in await _listed(pl)] == [sent["id"]]
    dsns = await _listed(pl, source="dsn")
    # One DSN, about the original; no DSN about the DSN.
    assert [(e["id"], e["original_email_id"]) for e in dsns] == [
        (detail["notifications"][0]["id"], sent["id"])
    ]
    assert sender_mx.received == []
    suppressions = (await pl.client.get("/v1/suppressions", headers=pl.auth())).json()["data"]
    assert [s["address"] for s in suppressions] == ["gone@dest.test"]


async def test_a_dsn_is_not_the_customers_mail(
    postline_factory: Factory,
    fake_dns: FakeDNS,
    fake_mx: FakeMX,
    fake_mx_factory: FakeMXFactory,
    topology: Topology,
) -> None:
    """It reaches the sender's MX, yet no send-log row and no webhook mention it; the
    original's detail shows it and its status; only an admin key lists or opens it."""
    pl, sender_mx = await _with_sender_mx(
        postline_factory,
        fake_dns,
        fake_mx_factory,
        fake_mx.port,
        webhook_allow_private=True,
        webhook_retry_schedule="0.1",
        **topology.settings,
    )
    async with WebhookReceiver() as receiver:
        hook = await pl.client.post(
            "/v1/webhooks", json={"url": receiver.url, "events": ["*"]}, headers=pl.auth()
        )
        assert hook.status_code == 201, hook.text
        fake_mx.on_rcpt("gone@dest.test", "550 5.1.1 <gone@dest.test>: no such user")
        sent = await pl.send(to="gone@dest.test")
        (dsn,) = await sender_mx.wait_for_messages(1)
        assert dsn.rcpt_tos == ["sender@example.test"]
        detail = await pl.wait_for(
            sent["id"],
            lambda d: [n["status"] for n in d["notifications"]] == ["delivered"],
            what="the DSN delivered",
        )
        (notification,) = detail["notifications"]
        assert notification["type"] == "dsn"
        assert notification["recipient"] == "sender@example.test"
        assert notification["created_at"] >= detail["created_at"]
        dsn_id = notification["id"]
        # Every event the original has is delivered; the DSN has none to deliver.
        await receiver.wait_until(
            lambda hooks: (
                {h.json["type"] for h in hooks if h.status < 300}
                >= {"email.queued", "email.bounced"}
            ),
            what="the original's webhooks",
        )
        async with pl.services.db.read() as conn:
            assert await email_store.get_events(conn, dsn_id) == []
        await pl.stop_engine()  # the dispatcher drains what it has claimed
    assert {h.json["data"]["email_id"] for h in receiver.received} == {sent["id"]}
    assert {h.json["data"]["recipient"] for h in receiver.received} == {"gone@dest.test"}

    # The send log is the customer's mail; an admin key asks for the DSNs by name.
    assert [e["id"] for e in await _listed(pl)] == [sent["id"]]
    assert [e["id"] for e in await _listed(pl, source="api")] == [sent["id"]]
    (listed_dsn,) = await _listed(pl, source="dsn")
    assert (listed_dsn["id"], listed_dsn["original_email_id"]) == (dsn_id, sent["id"])
    # Listed as what it is: an email id like any other, from the mail system, and the
    # subject every MTA's bounce has.
    assert dsn_id.startswith("em_")
    sender = f"MAILER-DAEMON@{pl.services.acceptor.hostname}"
    assert (listed_dsn["from"], listed_dsn["subject"]) == (
        f"Mail Delivery System <{sender}>",
        "Undelivered Mail Returned to Sender",
    )
    (recipient,) = (await pl.email(dsn_id))["recipients"]
    assert (recipient["address"], recipient["kind"], recipient["status"]) == (
        "sender@example.test",
        "to",
        "delivered",
    )

    # A domain's key sees its email and the DSN in its detail, never the DSN itself.
    scoped = (await create_key(pl.services.db, "shop", "example.test")).key
    assert [e["id"] for e in await _listed(pl, scoped)] == [sent["id"]]
    refused = await pl.client.get("/v1/emails?source=dsn", headers=pl.auth(scoped))
    assert refused.status_code == 403
    assert refused.headers["content-type"] == "application/problem+json"
    assert (await pl.email(sent["id"], scoped))["notifications"] == detail["notifications"]
    for path in (f"/v1/emails/{dsn_id}", f"/v1/emails/{dsn_id}/cancel"):
        method = pl.client.post if path.endswith("cancel") else pl.client.get
        assert (await method(path, headers=pl.auth(scoped))).status_code == 404
