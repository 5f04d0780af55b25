"""What the store hands out, on both stores: typed records with enums, and the
"still waiting" queries that job recovery and orphan cleanup share."""

from __future__ import annotations

from datetime import timedelta

from postline.model import RecipientStatus, WebhookDeliveryStatus
from postline.store import webhooks as webhook_store
from postline.store.recovery import WaitingRecipient, waiting_body_refs, waiting_recipients
from postline.store.types import utcnow
from postline.store.webhooks import Webhook, WebhookDelivery
from tests.harness.postline import Factory
from tests.harness.receiver import WebhookReceiver


async def test_waiting_queries_see_exactly_the_recipients_still_waiting(
    postline_factory: Factory, database_url: str
) -> None:
    pl = await postline_factory(engine=False, database_url=database_url)
    in_an_hour = (utcnow() + timedelta(hours=1)).isoformat()
    scheduled = await pl.send(to=["s1@dest.test", "s2@other.test"], scheduled_at=in_an_hour)
    queued = await pl.send(to="q@dest.test")
    cancelled = await pl.send(to="c@dest.test", scheduled_at=in_an_hour)
    response = await pl.client.post(f"/v1/emails/{cancelled['id']}/cancel", headers=pl.auth())
    assert response.status_code == 200, response.text

    async with pl.services.db.read() as conn:
        rows = await waiting_recipients(conn, utcnow() + timedelta(seconds=1))
        refs = await waiting_body_refs(conn)
        # Nothing was created before this instant: the grace period leaves all alone.
        too_young = await waiting_recipients(conn, utcnow() - timedelta(hours=1))

    assert all(isinstance(r, WaitingRecipient) for r in rows)
    seen = {(r.email_id, r.destination, r.status) for r in rows}
    assert seen == {
        (scheduled["id"], "dest.test", RecipientStatus.SCHEDULED),
        (scheduled["id"], "other.test", RecipientStatus.SCHEDULED),
        (queued["id"], "dest.test", RecipientStatus.QUEUED),
    }
    assert all(type(r.status) is RecipientStatus for r in rows)
    assert {r.scheduled_at is not None for r in rows if r.email_id == scheduled["id"]} == {True}
    assert too_young == []
    # The cancelled email is final: its body is no longer held by these queries.
    assert len(refs) == 2
    assert {r.body_ref for r in rows} == refs


async def test_webhook_records_carry_enums_and_the_domain_name(
    postline_factory: Factory, database_url: str
) -> None:
    pl = await postline_factory(engine=False, database_url=database_url, webhook_allow_private=True)
    async with WebhookReceiver() as receiver:
        response = await pl.client.post(
            "/v1/webhooks",
            json={"url": receiver.url, "events": ["*"], "domain": "example.test"},
            headers=pl.auth(),
        )
        assert response.status_code == 201, response.text
        webhook_id = response.json()["id"]
        response = await pl.client.post(f"/v1/webhooks/{webhook_id}/test", headers=pl.auth())
        assert response.status_code == 202, response.text
        delivery_id = response.json()["delivery_id"]

    async with pl.services.db.read() as conn:
        webhook = await webhook_store.get_webhook(conn, webhook_id)
        delivery = await webhook_store.get_delivery(conn, delivery_id)
        undispatched = await webhook_store.claim_undispatched(conn, 10)

    assert isinstance(webhook, Webhook)
    assert (webhook.domain_name, webhook.events, webhook.enabled) == ("example.test", ["*"], True)
    assert isinstance(delivery, WebhookDelivery)
    assert delivery.status is WebhookDeliveryStatus.PENDING
    assert (delivery.webhook_id, delivery.event_type, delivery.attempts) == (
        webhook_id,
        "webhook.test",
        0,
    )
    assert undispatched == []  # a test event goes to its one endpoint, never fanned out
