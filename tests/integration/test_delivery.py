"""The path of one email, API to fake MX, over real SMTP and DNS."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.harness import FakeDNS, FakeMX
from tests.harness.postline import PostlineUnderTest


async def test_delivered_at_the_mx_with_headers_intact(
    postline: PostlineUnderTest, fake_mx: FakeMX
) -> None:
    sent = await postline.send(
        to=["alice@dest.test"],
        cc="carol@dest.test",
        bcc=["bob@dest.test"],
        subject="Quarterly report ✓",
        text="Plain body",
        html="<p>HTML body</p>",
        headers={"X-Campaign": "q3"},
        reply_to="support@example.test",
        tags={"kind": "report"},
    )
    detail = await postline.wait_for_status(sent["id"], ["delivered"])
    assert [r["status"] for r in detail["recipients"]] == ["delivered"] * 3
    (received,) = await fake_mx.wait_for_messages(1)
    assert sorted(received.rcpt_tos) == ["alice@dest.test", "bob@dest.test", "carol@dest.test"]
    # The VERP return path: the email's id and its HMAC token (postline.inbound.returnpath).
    assert received.mail_from == postline.services.acceptor.return_paths.address(
        sent["id"], "example.test"
    )
    assert received.mail_from.startswith(f"bounces+{sent['id']}-")
    message = received.message
    assert message["Message-ID"] == sent["message_id"]
    assert message["Subject"] == "Quarterly report ✓"
    assert message["From"] == "Sender <sender@example.test>"
    assert message["To"] == "alice@dest.test"
    assert message["Cc"] == "carol@dest.test"
    assert message["Reply-To"] == "support@example.test"
    assert message["X-Campaign"] == "q3"
    assert message["Bcc"] is None and b"bob@dest.test" not in received.data
    assert received.helo == "postline.example.test"
    recipient = detail["recipients"][0]
    assert recipient["smtp_code"] == 250
    assert recipient["attempts"] == 1
    assert [t["status"] for t in recipient["timeline"]] == ["delivered"]
    assert recipient["timeline"][0]["mx_host"] == "mx.dest.test"
    types = [e["type"] for e in detail["events"]]
    assert types.count("email.queued") == 3 and types.count("email.delivered") == 3


async def test_550_511_bounces_hard(postline: PostlineUnderTest, fake_mx: FakeMX) -> None:
    fake_mx.on_rcpt("nobody@dest.test", "550 5.1.1 The email account does not exist")
    sent = await postline.send(to="nobody@dest.test")
    detail = await postline.wait_for_status(sent["id"], ["bounced"])
    (recipient,) = detail["recipients"]
    assert recipient["status"] == "bounced"
    assert recipient["smtp_code"] == 550
    assert recipient["enhanced_code"] == "5.1.1"
    assert recipient["bounce_type"] == "hard"
    assert "does not exist" in recipient["response"]
    assert fake_mx.received == []
    assert [e["type"] for e in detail["events"]] == ["email.queued", "email.bounced"]


async def test_451_then_250_is_deferred_then_delivered(
    postline: PostlineUnderTest, fake_mx: FakeMX
) -> None:
    fake_mx.on_rcpt("later@dest.test", "451 4.3.0 try again later", "250 2.1.5 OK")
    sent = await postline.send(to="later@dest.test")
    detail = await postline.wait_for_status(sent["id"], ["delivered"])
    (recipient,) = detail["recipients"]
    timeline = recipient["timeline"]
    assert [(t["attempt"], t["status"], t["smtp_code"]) for t in timeline] == [
        (1, "deferred", 451),
        (2, "delivered", 250),
    ]
    assert timeline[0]["enhanced_code"] == "4.3.0"
    assert recipient["attempts"] == 2
    assert [e["type"] for e in detail["events"]] == [
        "email.queued",
        "email.deferred",
        "email.delivered",
    ]
    assert len(fake_mx.received) == 1


async def test_one_of_two_rejected_is_partially_delivered(
    postline: PostlineUnderTest, fake_mx: FakeMX
) -> None:
    fake_mx.on_rcpt("gone@dest.test", "550 5.1.1 no such user")
    sent = await postline.send(to=["here@dest.test", "gone@dest.test"])
    detail = await postline.wait_for_status(sent["id"], ["partially_delivered"])
    statuses = {r["address"]: r["status"] for r in detail["recipients"]}
    assert statuses == {"here@dest.test": "delivered", "gone@dest.test": "bounced"}
    (received,) = fake_mx.received
    assert received.rcpt_tos == ["here@dest.test"]


async def test_one_job_per_destination_domain(postline: PostlineUnderTest, fake_mx: FakeMX) -> None:
    sent = await postline.send(to=["a@dest.test", "b@other.test", "c@dest.test"])
    await postline.wait_for_status(sent["id"], ["delivered"])
    assert sorted(sorted(m.rcpt_tos) for m in fake_mx.received) == [
        ["a@dest.test", "c@dest.test"],
        ["b@other.test"],
    ]


async def test_data_refused_fails_every_recipient_of_the_transaction(
    postline: PostlineUnderTest, fake_mx: FakeMX
) -> None:
    fake_mx.on_data("554 5.6.0 message content rejected")
    sent = await postline.send(to=["x@dest.test", "y@dest.test"])
    detail = await postline.wait_for_status(sent["id"], ["bounced"])
    for recipient in detail["recipients"]:
        assert recipient["smtp_code"] == 554
        assert recipient["enhanced_code"] == "5.6.0"


async def test_unknown_domain_bounces_without_connecting(
    postline: PostlineUnderTest, fake_mx: FakeMX
) -> None:
    sent = await postline.send(to="someone@nowhere.test")
    detail = await postline.wait_for_status(sent["id"], ["bounced"])
    (recipient,) = detail["recipients"]
    assert recipient["bounce_type"] == "hard"
    assert fake_mx.connections == 0


async def test_dns_servfail_defers(
    postline: PostlineUnderTest, fake_mx: FakeMX, fake_dns: FakeDNS
) -> None:
    fake_dns.servfail("broken.test")
    sent = await postline.send(to="someone@broken.test")
    detail = await postline.wait_for(
        sent["id"], lambda d: d["recipients"][0]["attempts"] >= 2, what="two deferrals"
    )
    assert detail["recipients"][0]["status"] == "deferred"
    assert fake_mx.connections == 0


async def test_scheduled_email_waits_then_can_be_cancelled(
    postline: PostlineUnderTest, fake_mx: FakeMX
) -> None:
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    sent = await postline.send(to="later@dest.test", scheduled_at=tomorrow)
    assert sent["recipients"][0]["status"] == "scheduled"
    detail = await postline.email(sent["id"])
    assert detail["status"] == "scheduled"
    response = await postline.client.post(
        f"/v1/emails/{sent['id']}/cancel", headers=postline.auth()
    )
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    again = await postline.client.post(f"/v1/emails/{sent['id']}/cancel", headers=postline.auth())
    assert again.status_code == 409
    assert fake_mx.connections == 0
