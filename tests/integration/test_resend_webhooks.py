"""Webhook receivers written for Resend take Postline's deliveries unchanged.

Resend signs its webhooks through Svix; its receivers verify with the ``svix`` library,
which reads the ``svix-*`` headers, and read Resend's payload members (``data.to`` as a
list, ``data.subject``, ``data.created_at``, ``data.bounce``). Here a real receiver does
exactly that, inside the request, with the endpoint's ``whsec_`` secret: it answers 204
only to what verifies, so Postline's own delivery log says whether it passed. The
``standardwebhooks`` library then verifies the same deliveries from the ``webhook-*``
headers alone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
import standardwebhooks.webhooks
import svix.webhooks

from tests.harness import FakeMX
from tests.harness.polling import poll
from tests.harness.postline import Factory, PostlineUnderTest
from tests.harness.receiver import WebhookReceiver

SIGNATURE_PARTS = ("id", "timestamp", "signature")


def only(prefix: str, headers: dict[str, str]) -> dict[str, str]:
    """The signature headers under one name only: the svix library falls back to the
    ``webhook-*`` ones, so a check that left them in would pass without ``svix-*``."""
    return {f"{prefix}-{part}": headers[f"{prefix}-{part}"] for part in SIGNATURE_PARTS}


@dataclass
class SvixReceiver(WebhookReceiver):
    """A receiver as Resend's documentation writes it: ``svix.webhooks.Webhook(secret)
    .verify(body, headers)`` before anything else; 400 to what does not verify."""

    secret: str = ""
    refused: list[str] = field(default_factory=list)

    def _status(self, body: bytes, headers: dict[str, str]) -> int:
        try:
            svix.webhooks.Webhook(self.secret).verify(body, only("svix", headers))
        except (svix.webhooks.WebhookVerificationError, KeyError) as exc:
            self.refused.append(f"{type(exc).__name__}: {exc}")
            return 400
        return 204


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[SvixReceiver]:
    hooks = SvixReceiver()
    await hooks.start()
    yield hooks
    await hooks.stop()


@pytest_asyncio.fixture
async def pl(postline_factory: Factory) -> PostlineUnderTest:
    return await postline_factory(webhook_allow_private=True, webhook_retry_schedule="0.1")


async def register(pl: PostlineUnderTest, url: str, events: list[str]) -> dict[str, Any]:
    response = await pl.client.post(
        "/v1/webhooks", json={"url": url, "events": events}, headers=pl.auth()
    )
    assert response.status_code == 201, response.text
    endpoint: dict[str, Any] = response.json()
    return endpoint


async def settled_deliveries(pl: PostlineUnderTest, webhook_id: str, count: int) -> list[Any]:
    """The endpoint's deliveries once ``count`` of them have settled (polled)."""

    async def settled() -> list[Any] | None:
        url = f"/v1/webhooks/{webhook_id}/deliveries"
        listed: list[Any] = (await pl.client.get(url, headers=pl.auth())).json()["data"]
        done = [d for d in listed if d["status"] != "pending"]
        return listed if len(done) >= count else None

    deliveries: list[Any] = await poll(settled, timeout=15, what=f"{count} settled deliveries")
    return deliveries


async def test_a_delivered_event_verifies_with_svix_and_standardwebhooks(
    pl: PostlineUnderTest, receiver: SvixReceiver, fake_mx: FakeMX
) -> None:
    endpoint = await register(pl, receiver.url, ["email.delivered", "email.bounced"])
    receiver.secret = endpoint["secret"]
    fake_mx.on_rcpt("gone@dest.test", "550 5.1.1 no such user")
    sent = await pl.send(
        **{"from": "Acme <hello@example.test>"},
        to=["ana@dest.test", "gone@dest.test"],
        subject="Your receipt",
        tags={"order": "42"},
    )
    await receiver.wait_until(lambda hs: len(hs) >= 2, what="the delivered and bounced events")

    # The receiver verified both with svix from the svix-* headers, and said so with 204.
    assert receiver.refused == []
    deliveries = await settled_deliveries(pl, endpoint["id"], 2)
    assert [(d["status"], d["response_code"]) for d in deliveries] == [("succeeded", 204)] * 2

    email = await pl.email(sent["id"])
    by_type = {hook.json["type"]: hook for hook in receiver.received}
    assert set(by_type) == {"email.delivered", "email.bounced"}
    for hook in by_type.values():
        # Both names carry the same values: one Standard Webhooks signature.
        for part in SIGNATURE_PARTS:
            assert hook.headers[f"svix-{part}"] == hook.headers[f"webhook-{part}"]
        assert hook.headers["svix-id"].startswith("evt_")
        # standardwebhooks, from the webhook-* headers alone, accepts the same request...
        payload = standardwebhooks.webhooks.Webhook(endpoint["secret"]).verify(
            hook.body, only("webhook", hook.headers)
        )
        data = payload["data"]
        # ...whose data holds Resend's members beside Postline's.
        assert data["email_id"] == sent["id"]
        assert data["from"] == "Acme <hello@example.test>"
        assert data["to"] == [data["recipient"]]
        assert data["subject"] == "Your receipt"
        assert data["created_at"] == email["created_at"]
        assert data["tags"] == {"order": "42"}
        assert payload["created_at"].endswith("Z")

    delivered = by_type["email.delivered"].json["data"]
    assert delivered["to"] == ["ana@dest.test"]
    assert delivered["status"] == "delivered"
    assert "bounce" not in delivered
    bounced = by_type["email.bounced"].json["data"]
    assert bounced["to"] == ["gone@dest.test"]
    assert bounced["bounce"] == {
        "message": bounced["reason"],
        "type": "Permanent",
        "subType": "hard",
    }
    assert "5.1.1" in bounced["bounce"]["message"]


async def test_svix_refuses_a_delivery_signed_for_another_endpoint(
    pl: PostlineUnderTest, receiver: SvixReceiver
) -> None:
    """The receiver's check can fail: with another endpoint's secret nothing verifies,
    and Postline records the receiver's refusal."""
    endpoint = await register(pl, receiver.url, ["email.delivered"])
    other = await register(pl, receiver.url + "/other", ["email.bounced"])
    receiver.secret = other["secret"]
    await pl.send(to="ana@dest.test")
    hooks = await receiver.wait_until(lambda hs: len(hs) >= 1, what="the delivered event")
    assert hooks[0].status == 400
    assert receiver.refused and "signature" in receiver.refused[0].lower()
    (delivery, *_) = await settled_deliveries(pl, endpoint["id"], 1)
    assert delivery["response_code"] == 400
    with pytest.raises(svix.webhooks.WebhookVerificationError):
        svix.webhooks.Webhook(other["secret"]).verify(hooks[0].body, only("svix", hooks[0].headers))
    svix.webhooks.Webhook(endpoint["secret"]).verify(hooks[0].body, only("svix", hooks[0].headers))
