"""The inbound listener: late bounces and complaints mailed with smtplib to the real
listener, applied to mail delivered to a fake MX, with their webhooks and suppressions;
forged and foreign recipients refused at RCPT; what cannot be applied stored and listed."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
import pytest_asyncio

from postline.app import inbound_listener
from postline.ids import new_id
from postline.inbound.listener import InboundListener
from postline.retention import retention_pass
from postline.store import emails as email_store
from postline.store.types import utcnow
from tests.harness import FakeMX, reports
from tests.harness.postline import Factory, PostlineUnderTest
from tests.harness.receiver import WebhookReceiver


@pytest_asyncio.fixture
async def pl(postline_factory: Factory) -> PostlineUnderTest:
    return await postline_factory(
        webhook_allow_private=True, webhook_retry_schedule="0.1,0.2,0.2,0.2,0.2"
    )


@pytest_asyncio.fixture
async def inbound(pl: PostlineUnderTest) -> AsyncIterator[InboundListener]:
    listener = inbound_listener(pl.services, "127.0.0.1", 0)
    await listener.start()
    yield listener
    await listener.stop()


def _smtp_send(port: int, rcpt: str, data: bytes, sender: str) -> dict[str, Any]:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="mx.dest.test", timeout=30) as smtp:
        refused: dict[str, Any] = smtp.sendmail(sender, [rcpt], data)
        return refused


async def mail(listener: InboundListener, rcpt: str, data: bytes, sender: str = "") -> None:
    """Mail ``data`` to ``rcpt`` at the listener as a remote MTA would (null sender): in a
    thread, as smtplib blocks and the listener runs in this loop."""
    await asyncio.to_thread(_smtp_send, listener.port, rcpt, data, sender)


async def delivered(
    pl: PostlineUnderTest, fake_mx: FakeMX, to: list[str]
) -> tuple[dict[str, Any], str]:
    """Send to ``to`` (all accepted by the fake MX); the email and its return path."""
    sent = await pl.send(to=to)
    await pl.wait_for_status(sent["id"], ["delivered"])
    (received,) = [m for m in fake_mx.received if m.rcpt_tos == to]
    return sent, received.mail_from


async def register(pl: PostlineUnderTest, url: str, events: list[str]) -> None:
    response = await pl.client.post(
        "/v1/webhooks", json={"url": url, "events": events}, headers=pl.auth()
    )
    assert response.status_code == 201, response.text


def recipient(detail: dict[str, Any], address: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [r for r in detail["recipients"] if r["address"] == address]
    (one,) = found
    return one


async def suppressions(pl: PostlineUnderTest) -> dict[str, str]:
    response = await pl.client.get("/v1/suppressions", headers=pl.auth())
    return {s["address"]: s["reason"] for s in response.json()["data"]}


async def unmatched(pl: PostlineUnderTest) -> list[dict[str, Any]]:
    response = await pl.client.get("/v1/inbound/reports", headers=pl.auth())
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def counted(pl: PostlineUnderTest, name: str, **labels: str) -> float:
    value = pl.services.metrics.registry.get_sample_value(f"postline_{name}_total", labels)
    return value or 0.0


async def test_a_gmail_dsn_bounces_a_delivered_recipient_and_suppresses_it(
    pl: PostlineUnderTest, inbound: InboundListener, fake_mx: FakeMX, receiver: WebhookReceiver
) -> None:
    await register(pl, receiver.url, ["email.bounced"])
    sent, return_path = await delivered(pl, fake_mx, ["ok@dest.test", "gone@dest.test"])
    assert return_path.startswith(f"bounces+{sent['id']}-")

    await mail(inbound, return_path, reports.gmail_dsn(return_path, "gone@dest.test", "<x@y>"))

    detail = await pl.wait_for_status(sent["id"], ["partially_delivered"])
    gone = recipient(detail, "gone@dest.test")
    assert (gone["status"], gone["bounce_type"]) == ("bounced", "hard")
    assert [(t["status"], t["smtp_code"], t["enhanced_code"]) for t in gone["timeline"]] == [
        ("delivered", 250, "2.0.0"),
        ("bounced", 550, "5.1.1"),
    ]
    assert gone["attempts"] == 1
    assert recipient(detail, "ok@dest.test")["status"] == "delivered"
    (hook,) = await receiver.wait_until(lambda hs: len(hs) >= 1, what="email.bounced")
    assert hook.json["type"] == "email.bounced"
    assert hook.json["data"]["recipient"] == "gone@dest.test"
    assert hook.json["data"]["bounce_type"] == "hard"
    assert hook.json["data"]["enhanced_code"] == "5.1.1"
    assert await suppressions(pl) == {"gone@dest.test": "hard_bounce"}
    assert counted(pl, "inbound_reports", kind="bounce", result="applied") == 1

    # The same report again finds the recipient bounced already: stored, not applied twice.
    await mail(inbound, return_path, reports.gmail_dsn(return_path, "gone@dest.test", "<x@y>"))
    (stored,) = await unmatched(pl)
    assert stored["email_id"] == sent["id"]
    assert stored["reason"] == "the recipient is bounced, not delivered"
    await pl.stop_engine()
    assert len(receiver.received) == 1


@pytest.mark.parametrize(
    ("build", "rule"),
    [
        (reports.gmail_text_bounce, "code.5.1.1"),
        (reports.exchange_ndr, "exchange.recipient_not_found"),
        (reports.exchange_legacy_ndr, "code.5.1.1"),
        (reports.yahoo_failure_notice, "yahoo.no_account"),
    ],
)
async def test_text_only_bounces_apply_too(
    pl: PostlineUnderTest,
    inbound: InboundListener,
    fake_mx: FakeMX,
    build: reports.Builder,
    rule: str,
) -> None:
    sent, return_path = await delivered(pl, fake_mx, ["gone@dest.test"])
    await mail(inbound, return_path, build(return_path, "gone@dest.test", sent["message_id"]))
    detail = await pl.wait_for_status(sent["id"], ["bounced"])
    (gone,) = detail["recipients"]
    assert (gone["status"], gone["bounce_type"]) == ("bounced", "hard")
    assert await suppressions(pl) == {"gone@dest.test": "hard_bounce"}
    assert [e["type"] for e in detail["events"]][-1] == "email.bounced"
    assert await unmatched(pl) == []
    async with pl.services.db.read() as conn:
        (stored,) = await email_store.get_recipients(conn, sent["id"])
    assert stored.bounce_rule == rule


async def test_a_yahoo_complaint_to_the_fbl_address_marks_the_recipient_complained(
    pl: PostlineUnderTest, inbound: InboundListener, fake_mx: FakeMX, receiver: WebhookReceiver
) -> None:
    """Yahoo's CFL redacts the recipient: the return path in the report finds the email,
    and its only recipient is the one who complained."""
    await register(pl, receiver.url, ["email.complained"])
    sent, return_path = await delivered(pl, fake_mx, ["reader@dest.test"])
    report = reports.yahoo_cfl(return_path, None, sent["message_id"])

    await mail(inbound, pl.settings.fbl_address, report)

    detail = await pl.wait_for(
        sent["id"], lambda d: d["recipients"][0]["status"] == "complained", what="complained"
    )
    assert detail["status"] == "delivered"  # a complaint is about mail that arrived
    assert detail["last_event"] == "complained"
    # The send log says the same as the email's own answer.
    listed = await pl.client.get("/v1/emails", headers=pl.auth())
    (item,) = [e for e in listed.json()["data"] if e["id"] == sent["id"]]
    assert (item["status"], item["last_event"]) == ("delivered", "complained")
    (hook,) = await receiver.wait_until(lambda hs: len(hs) >= 1, what="email.complained")
    assert hook.json["type"] == "email.complained"
    assert hook.json["data"]["recipient"] == "reader@dest.test"
    assert await suppressions(pl) == {"reader@dest.test": "complaint"}


async def test_a_microsoft_jmrp_complaint_names_one_of_several_recipients(
    pl: PostlineUnderTest, inbound: InboundListener, fake_mx: FakeMX
) -> None:
    to = ["a@dest.test", "b@dest.test"]
    sent, return_path = await delivered(pl, fake_mx, to)
    await mail(inbound, return_path, reports.microsoft_jmrp(return_path, "b@dest.test", "<m@x>"))
    detail = await pl.wait_for(
        sent["id"],
        lambda d: recipient(d, "b@dest.test")["status"] == "complained",
        what="b complained",
    )
    assert recipient(detail, "a@dest.test")["status"] == "delivered"
    assert await suppressions(pl) == {"b@dest.test": "complaint"}


async def test_a_complaint_to_the_fbl_address_found_by_message_id(
    pl: PostlineUnderTest, inbound: InboundListener, fake_mx: FakeMX
) -> None:
    """The older JMRP form names no return path: the original's Message-ID finds the email."""
    sent, _ = await delivered(pl, fake_mx, ["c@dest.test", "d@dest.test"])
    report = reports.microsoft_jmrp_legacy("x@x.test", "c@dest.test", sent["message_id"])
    await mail(inbound, pl.settings.fbl_address, report)
    detail = await pl.wait_for(
        sent["id"],
        lambda d: recipient(d, "c@dest.test")["status"] == "complained",
        what="c complained",
    )
    assert recipient(detail, "d@dest.test")["status"] == "delivered"


async def test_a_forged_token_is_refused_at_rcpt(
    pl: PostlineUnderTest, inbound: InboundListener, fake_mx: FakeMX
) -> None:
    sent, return_path = await delivered(pl, fake_mx, ["ok@dest.test"])
    local, _, domain = return_path.rpartition("@")
    forged = local[:-4] + ("aaaa" if not local.endswith("aaaa") else "bbbb") + "@" + domain
    other_email = return_path.replace(sent["id"], new_id("em_"))
    for address in (forged, other_email):
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            await mail(inbound, address, reports.gmail_dsn(address, "ok@dest.test", "<x@y>"))
        ((code, text),) = refused.value.recipients.values()
        assert (code, text[:5]) == (550, b"5.1.1")
    assert counted(pl, "inbound_refused", reason="forged_token") == 2
    detail = await pl.email(sent["id"])
    assert detail["recipients"][0]["status"] == "delivered"
    assert await unmatched(pl) == []


@pytest.mark.parametrize(
    "address",
    ["postmaster@postline.example.test", "someone@gmail.com", "bounces@bounces.example.test"],
)
async def test_any_other_address_is_refused_550_5_1_1(
    pl: PostlineUnderTest, inbound: InboundListener, address: str
) -> None:
    """Never an open relay: nothing but return paths and the feedback address."""
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        await mail(inbound, address, reports.not_a_report(address), sender="spam@spam.test")
    ((code, text),) = refused.value.recipients.values()
    assert (code, text) == (550, b"5.1.1 No such user here")
    assert (
        counted(pl, "inbound_refused", reason="not_a_return_path")
        + counted(pl, "inbound_refused", reason="forged_token")
        == 1
    )


async def test_what_cannot_be_applied_is_stored_listed_and_counted(
    pl: PostlineUnderTest, inbound: InboundListener, fake_mx: FakeMX, postline_factory: Factory
) -> None:
    sent, return_path = await delivered(pl, fake_mx, ["ok@dest.test"])
    purged = pl.services.acceptor.return_paths.address(new_id("em_"), "example.test")
    await mail(inbound, return_path, reports.not_a_report(return_path))
    await mail(inbound, return_path, reports.delayed_dsn(return_path, "ok@dest.test", "<m@x>"))
    await mail(inbound, return_path, reports.gmail_dsn(return_path, "stranger@dest.test", "<m@x>"))
    await mail(inbound, purged, reports.gmail_dsn(purged, "ok@dest.test", "<m@x>"))
    await mail(inbound, pl.settings.fbl_address, reports.yahoo_cfl("x@x.test", None, "<none@x>"))

    stored = await unmatched(pl)
    reasons = [(s["kind"], s["reason"]) for s in reversed(stored)]
    assert reasons == [
        (None, "not a delivery report or a feedback report"),
        ("bounce", "no failed recipient in the report (actions: delayed)"),
        ("bounce", "the report's recipient is not one of the email's"),
        ("bounce", "email not found: purged, or never sent"),
        ("complaint", "names no email Postline sent"),
    ]
    assert stored[-1]["subject"] == "Out of office"
    assert "I am away until Monday." in stored[-1]["excerpt"]
    assert stored[1]["email_id"] == purged.split("+")[1].split("-")[0]
    assert (await pl.email(sent["id"]))["recipients"][0]["status"] == "delivered"
    assert counted(pl, "inbound_reports", kind="unparsed", result="unmatched") == 1
    assert counted(pl, "inbound_reports", kind="bounce", result="unmatched") == 3
    assert counted(pl, "inbound_reports", kind="complaint", result="unmatched") == 1
    metrics = (await pl.client.get("/metrics")).text
    assert 'postline_inbound_reports_total{kind="bounce",result="unmatched"} 3.0' in metrics

    page = await pl.client.get("/v1/inbound/reports", params={"limit": 2}, headers=pl.auth())
    assert [s["id"] for s in page.json()["data"]] == [s["id"] for s in stored[:2]]
    rest = await pl.client.get(
        "/v1/inbound/reports", params={"cursor": page.json()["next_cursor"]}, headers=pl.auth()
    )
    assert [s["id"] for s in rest.json()["data"]] == [s["id"] for s in stored[2:]]


async def test_a_complaint_applies_on_postgresql(
    postline_factory: Factory, postgres_url: str, fake_mx: FakeMX
) -> None:
    """The email is locked (FOR UPDATE) while its recipient moves, as the recorder does."""
    pl = await postline_factory(database_url=postgres_url)
    listener = inbound_listener(pl.services, "127.0.0.1", 0)
    await listener.start()
    try:
        sent, return_path = await delivered(pl, fake_mx, ["pg@dest.test"])
        report = reports.yahoo_cfl(return_path, "pg@dest.test", sent["message_id"])
        await mail(listener, return_path, report)
        await pl.wait_for(
            sent["id"], lambda d: d["recipients"][0]["status"] == "complained", what="complained"
        )
    finally:
        await listener.stop()
    assert await suppressions(pl) == {"pg@dest.test": "complaint"}


async def test_other_feedback_types_and_old_unmatched_reports(
    pl: PostlineUnderTest, inbound: InboundListener, fake_mx: FakeMX
) -> None:
    """A not-spam report moves nothing; the retention purge forgets unmatched reports
    with the emails of their time."""
    sent, return_path = await delivered(pl, fake_mx, ["fan@dest.test"])
    report = reports.yahoo_cfl(return_path, "fan@dest.test", sent["message_id"]).replace(
        b"Feedback-Type: abuse", b"Feedback-Type: not-spam"
    )
    await mail(inbound, return_path, report)
    (stored,) = await unmatched(pl)
    assert stored["reason"] == "feedback-type not-spam is not a complaint"
    assert (await pl.email(sent["id"]))["recipients"][0]["status"] == "delivered"

    now = utcnow()
    kept = await retention_pass(
        pl.services.db, pl.services.spool, now, body_retention_seconds=0, retention_days=30
    )
    assert kept.emails_purged == 0
    assert len(await unmatched(pl)) == 1
    await retention_pass(
        pl.services.db,
        pl.services.spool,
        now + timedelta(days=31),
        body_retention_seconds=0,
        retention_days=30,
    )
    assert await unmatched(pl) == []


def _two_rcpts(port: int, rcpts: list[str], data: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        assert smtp.sendmail("", rcpts, data) == {}


async def test_one_report_to_two_return_paths_applies_to_each_email(
    pl: PostlineUnderTest, inbound: InboundListener, fake_mx: FakeMX
) -> None:
    """A receiver may batch the reports of two emails in one transaction."""
    first, first_path = await delivered(pl, fake_mx, ["gone@dest.test"])
    second = await pl.send(to=["gone@dest.test"], subject="Again")
    await pl.wait_for_status(second["id"], ["delivered"])
    (second_path,) = [m.mail_from for m in fake_mx.received if second["id"] in m.mail_from]
    report = reports.gmail_dsn(first_path, "gone@dest.test", "<m@x>")
    await asyncio.to_thread(_two_rcpts, inbound.port, [first_path, second_path], report)
    for sent in (first, second):
        await pl.wait_for_status(sent["id"], ["bounced"])


def _protocol_errors(port: int) -> list[int]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo("mx.dest.test")
        assert "size" in smtp.esmtp_features
        codes = [smtp.docmd("DATA")[0]]  # no MAIL, no RCPT
        codes.append(smtp.docmd("RCPT", "TO:<x@y.test>")[0])  # RCPT before MAIL
        codes.append(smtp.docmd("MAIL", "FROM:<> SIZE=20000000")[0])  # over the limit
        codes.append(smtp.docmd("MAIL", "FROM:<>")[0])
        codes.append(smtp.docmd("DATA")[0])  # no RCPT
        return codes


async def test_protocol_errors_get_their_replies(
    pl: PostlineUnderTest, inbound: InboundListener
) -> None:
    codes = await asyncio.to_thread(_protocol_errors, inbound.port)
    assert codes == [503, 503, 552, 250, 503]
    assert await unmatched(pl) == []


async def test_only_admin_keys_list_unmatched_reports(pl: PostlineUnderTest) -> None:
    response = await pl.client.post(
        "/v1/api-keys", json={"name": "scoped", "domain": "example.test"}, headers=pl.auth()
    )
    scoped = response.json()["key"]
    assert (await pl.client.get("/v1/inbound/reports", headers=pl.auth(scoped))).status_code == 403
    assert (await pl.client.get("/v1/inbound/reports")).status_code == 401


async def test_a_report_before_its_delivery_is_recorded_is_asked_for_again(
    postline_factory: Factory,
) -> None:
    """A complaint that crossed the recording of its delivery (the recipient still
    ``queued``: here, no engine runs) gets a 451, so the reporter's MTA offers it again
    once the outcome is there; nothing is stored as unmatched."""
    pl = await postline_factory(engine=False)
    listener = inbound_listener(pl.services, "127.0.0.1", 0)
    await listener.start()
    try:
        sent = await pl.send(to=["early@dest.test"])
        return_path = pl.services.acceptor.return_paths.address(sent["id"], "example.test")
        report = reports.microsoft_jmrp(return_path, "early@dest.test", sent["message_id"])
        with pytest.raises(smtplib.SMTPDataError) as refused:
            await mail(listener, return_path, report)
    finally:
        await listener.stop()
    assert refused.value.smtp_code == 451
    assert b"not recorded yet" in refused.value.smtp_error
    assert await unmatched(pl) == []
    assert (await pl.email(sent["id"]))["recipients"][0]["status"] == "queued"
    assert counted(pl, "inbound_reports", kind="complaint", result="unmatched") == 0
