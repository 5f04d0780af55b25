"""Signed webhooks from the outbox: every outcome arrives, verified by the reference library."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import pytest_asyncio
from standardwebhooks.webhooks import Webhook

from tests.harness import FakeDNS, FakeMX
from tests.harness.postline import Factory, PostlineUnderTest
from tests.harness.receiver import Hook, WebhookReceiver


@pytest_asyncio.fixture
async def pl(postline_factory: Factory) -> PostlineUnderTest:
    return await postline_factory(
        webhook_allow_private=True, webhook_retry_schedule="0.1,0.2,0.2,0.2,0.2"
    )


async def register(pl: PostlineUnderTest, url: str, events: list[str] | None = None) -> Any:
    response = await pl.client.post(
        "/v1/webhooks", json={"url": url, "events": events or ["*"]}, headers=pl.auth()
    )
    assert response.status_code == 201, response.text
    return response.json()


async def settled_deliveries(pl: PostlineUnderTest, webhook_id: str) -> list[Any]:
    """The endpoint's deliveries once none is pending any more (polled, with a deadline)."""
    url = f"/v1/webhooks/{webhook_id}/deliveries"
    deadline = asyncio.get_running_loop().time() + 15
    while True:
        deliveries: list[Any] = (await pl.client.get(url, headers=pl.auth())).json()["data"]
        if deliveries and all(d["status"] != "pending" for d in deliveries):
            return deliveries
        assert asyncio.get_running_loop().time() < deadline, deliveries
        await asyncio.sleep(0.05)


def verified(hook: Hook, secret: str) -> Any:
    """What a receiver does: verify with the Standard Webhooks reference library."""
    return Webhook(secret).verify(hook.body, hook.headers)


def types_by_recipient(hooks: list[Hook]) -> set[tuple[str, str]]:
    return {(h.json["type"], h.json["data"]["recipient"]) for h in hooks if h.status < 300}


async def test_every_outcome_arrives_signed(
    pl: PostlineUnderTest, receiver: WebhookReceiver, fake_mx: FakeMX
) -> None:
    endpoint = await register(pl, receiver.url)
    assert endpoint["secret"].startswith("whsec_")
    fake_mx.on_rcpt("bounce@dest.test", "550 5.1.1 no such user")
    fake_mx.on_rcpt("later@dest.test", "451 4.3.0 try later", "250 OK")
    sent = await pl.send(to=["ok@dest.test", "bounce@dest.test", "later@dest.test"])
    wanted = {
        ("email.queued", "ok@dest.test"),
        ("email.delivered", "ok@dest.test"),
        ("email.bounced", "bounce@dest.test"),
        ("email.deferred", "later@dest.test"),
        ("email.delivered", "later@dest.test"),
    }
    hooks = await receiver.wait_until(
        lambda hs: wanted <= types_by_recipient(hs), what="every outcome"
    )
    for hook in hooks:
        payload = verified(hook, endpoint["secret"])
        assert hook.headers["webhook-id"].startswith("evt_")
        assert payload["data"]["email_id"] == sent["id"]
        assert payload["data"]["message_id"] == sent["message_id"]
    bounced = next(h.json for h in hooks if h.json["type"] == "email.bounced")
    assert bounced["data"]["smtp_code"] == 550
    assert bounced["data"]["enhanced_code"] == "5.1.1"
    assert bounced["data"]["bounce_type"] == "hard"
    # Events carry a per-email sequence so a receiver can order them.
    sequences = sorted(h.json["data"]["sequence"] for h in hooks)
    assert sequences == sorted(set(sequences))
    with pytest.raises(Exception, match="signature"):
        Webhook("whsec_" + "A" * 44).verify(hooks[0].body, hooks[0].headers)


async def test_receiver_down_then_up_gets_everything_with_stable_ids(
    pl: PostlineUnderTest, receiver: WebhookReceiver
) -> None:
    endpoint = await register(pl, receiver.url, ["email.delivered", "email.queued"])
    receiver.fail_next(3, 503)
    sent = await pl.send(to=["a@dest.test", "b@dest.test"])
    await pl.wait_for_status(sent["id"], ["delivered"])
    hooks = await receiver.wait_until(
        lambda hs: len(types_by_recipient(hs)) == 4, what="4 events delivered"
    )
    ok = [h for h in hooks if h.status == 200]
    ids = [h.headers["webhook-id"] for h in ok]
    assert len(ids) == len(set(ids)) == 4  # none twice
    retried = {h.headers["webhook-id"] for h in hooks if h.status == 503}
    assert retried and retried <= set(ids)  # retries kept the same webhook-id
    for hook in ok:
        verified(hook, endpoint["secret"])
    deliveries = await settled_deliveries(pl, endpoint["id"])
    assert {d["status"] for d in deliveries} == {"succeeded"}
    assert sum(d["attempts"] for d in deliveries) == 4 + 3


async def test_filters_by_event_type(
    pl: PostlineUnderTest, receiver: WebhookReceiver, fake_mx: FakeMX
) -> None:
    await register(pl, receiver.url, ["email.bounced"])
    fake_mx.on_rcpt("gone@dest.test", "550 5.1.1 no such user")
    sent = await pl.send(to=["ok@dest.test", "gone@dest.test"])
    await pl.wait_for_status(sent["id"], ["partially_delivered"])
    hooks = await receiver.wait_until(lambda hs: len(hs) >= 1, what="the bounce")
    await pl.stop_engine()  # everything dispatched by now is all there is
    assert [h.json["type"] for h in receiver.received] == ["email.bounced"]
    assert hooks[0].json["data"]["recipient"] == "gone@dest.test"


async def test_410_disables_the_endpoint(pl: PostlineUnderTest, receiver: WebhookReceiver) -> None:
    endpoint = await register(pl, receiver.url, ["email.queued"])
    receiver.default_status = 410
    await pl.send(to="a@dest.test")
    await receiver.wait_until(lambda hs: len(hs) >= 1, what="one attempt")
    (delivery,) = await settled_deliveries(pl, endpoint["id"])
    assert delivery["status"] == "failed" and delivery["response_code"] == 410
    body = (await pl.client.get(f"/v1/webhooks/{endpoint['id']}", headers=pl.auth())).json()
    assert body["enabled"] is False
    assert body["disabled_reason"] == "the endpoint answered 410 Gone"


async def test_test_event_replay_and_secret_rotation(
    pl: PostlineUnderTest, receiver: WebhookReceiver
) -> None:
    endpoint = await register(pl, receiver.url, ["email.bounced"])
    test = await pl.client.post(f"/v1/webhooks/{endpoint['id']}/test", headers=pl.auth())
    assert test.status_code == 202
    (hook,) = await receiver.wait_until(lambda hs: len(hs) == 1, what="the test event")
    assert verified(hook, endpoint["secret"])["type"] == "webhook.test"

    replay = await pl.client.post(
        f"/v1/webhooks/{endpoint['id']}/deliveries/{test.json()['delivery_id']}/replay",
        headers=pl.auth(),
    )
    assert replay.status_code == 202
    hooks = await receiver.wait_until(lambda hs: len(hs) == 2, what="the replay")
    assert hooks[1].headers["webhook-id"] == hooks[0].headers["webhook-id"]

    rotated = await pl.client.post(
        f"/v1/webhooks/{endpoint['id']}/rotate-secret", headers=pl.auth()
    )
    new_secret = rotated.json()["secret"]
    assert new_secret != endpoint["secret"]
    await pl.client.post(f"/v1/webhooks/{endpoint['id']}/test", headers=pl.auth())
    hooks = await receiver.wait_until(lambda hs: len(hs) == 3, what="a test after rotation")
    # During the overlap both the new and the old secret verify.
    assert len(hooks[2].headers["webhook-signature"].split(" ")) == 2
    verified(hooks[2], new_secret)
    verified(hooks[2], endpoint["secret"])


async def test_webhook_management_is_scoped(pl: PostlineUnderTest) -> None:
    scoped = await pl.client.post(
        "/v1/api-keys", json={"name": "s", "domain": "example.test"}, headers=pl.auth()
    )
    key = scoped.json()["key"]
    admin_hook = await register(pl, "http://127.0.0.1:9/admin")
    mine = await pl.client.post(
        "/v1/webhooks",
        json={"url": "http://127.0.0.1:9/mine", "events": ["email.delivered"]},
        headers=pl.auth(key),
    )
    assert mine.status_code == 201
    assert mine.json()["domain"] == "example.test"
    listed = await pl.client.get("/v1/webhooks", headers=pl.auth(key))
    assert [w["id"] for w in listed.json()["data"]] == [mine.json()["id"]]
    for method in ("get", "delete"):
        response = await getattr(pl.client, method)(
            f"/v1/webhooks/{admin_hook['id']}", headers=pl.auth(key)
        )
        assert response.status_code == 404
    patched = await pl.client.patch(
        f"/v1/webhooks/{mine.json()['id']}", json={"enabled": False}, headers=pl.auth(key)
    )
    assert patched.json()["enabled"] is False
    bad = await pl.client.post(
        "/v1/webhooks",
        json={"url": "http://127.0.0.1:9/x", "events": ["email.nope"]},
        headers=pl.auth(key),
    )
    assert bad.status_code == 422


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://loopback.evil.test/hook",
        "http://localhost/hook",
        "ftp://example.test/hook",
        # IPv6 forms that carry a private IPv4 address (ipaddress.is_global says yes)
        "http://[64:ff9b::a9fe:a9fe]/",
        "http://[::127.0.0.1]/",
        "http://[::ffff:0:127.0.0.1]/",
        "http://[2002:a9fe:a9fe::]/",
        "http://[fec0::1]/",
        "http://nat64.evil.test/hook",
    ],
)
async def test_ssrf_refused_at_create(
    postline: PostlineUnderTest, fake_dns: FakeDNS, url: str
) -> None:
    fake_dns.add_a("loopback.evil.test", "127.0.0.1")
    fake_dns.add_aaaa("nat64.evil.test", "64:ff9b::a9fe:a9fe")  # 169.254.169.254
    response = await postline.client.post(
        "/v1/webhooks", json={"url": url, "events": ["*"]}, headers=postline.auth()
    )
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == "url"


async def test_ssrf_rechecked_at_send_time(postline: PostlineUnderTest, fake_dns: FakeDNS) -> None:
    fake_dns.add_a("rebind.evil.test", "93.184.216.34")  # public when the URL is saved
    endpoint = await register(postline, "http://rebind.evil.test/hook", ["email.queued"])
    fake_dns.remove("rebind.evil.test")
    fake_dns.add_a("rebind.evil.test", "127.0.0.1")  # ... and loopback when it is called
    await postline.send(to="a@dest.test")
    url = f"/v1/webhooks/{endpoint['id']}/deliveries"
    deadline = asyncio.get_running_loop().time() + 15
    while True:
        deliveries = (await postline.client.get(url, headers=postline.auth())).json()["data"]
        if deliveries and deliveries[0]["attempts"] >= 1:
            break
        assert asyncio.get_running_loop().time() < deadline, deliveries
        await asyncio.sleep(0.05)
    assert deliveries[0]["response_code"] is None
    assert deliveries[0]["status"] == "pending"  # refused, retried later, never sent
    assert postline.transport.violations == []
