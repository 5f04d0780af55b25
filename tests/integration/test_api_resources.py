"""The happy paths of the HTTP API (docs/API.md) and how a domain-scoped key sees it."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert, select

from postline.ids import new_id
from postline.store.schema import api_keys, suppressions
from tests.harness import FakeMX
from tests.harness.postline import Factory, PostlineUnderTest

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
ITEM_FIELDS = {
    "id",
    "message_id",
    "from",
    "subject",
    "status",
    "source",
    "created_at",
    "updated_at",
    "recipient_count",
    "tags",
}
RECIPIENT_FIELDS = {
    "address",
    "kind",
    "status",
    "smtp_code",
    "enhanced_code",
    "response",
    "bounce_type",
    "attempts",
    "updated_at",
    "timeline",
}
TIMELINE_FIELDS = {
    "attempt",
    "status",
    "mx_host",
    "smtp_code",
    "enhanced_code",
    "response",
    "bounce_type",
    "duration_ms",
    "at",
}
EVENT_FIELDS = {"id", "type", "recipient", "created_at"}


async def get_json(postline: PostlineUnderTest, path: str, key: str | None = None) -> Any:
    response = await postline.client.get(path, headers=postline.auth(key))
    assert response.status_code == 200, response.text
    return response.json()


async def new_key(
    postline: PostlineUnderTest, name: str, domain: str | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name}
    if domain is not None:
        body["domain"] = domain
    response = await postline.client.post("/v1/api-keys", json=body, headers=postline.auth())
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def domain_id(postline: PostlineUnderTest, name: str) -> str:
    domains = (await get_json(postline, "/v1/domains"))["data"]
    (found,) = [d["id"] for d in domains if d["name"] == name]
    assert isinstance(found, str)
    return found


async def next_millisecond() -> None:
    """Let the clock pass the current millisecond, so the next id and created_at are later.

    Ids are time-ordered at millisecond resolution; two emails accepted within one
    millisecond have no defined order. A spin of at most a millisecond, not a sleep.
    """
    start = time.time_ns() // 1_000_000
    while time.time_ns() // 1_000_000 <= start:
        await asyncio.sleep(0)


async def list_ids(
    postline: PostlineUnderTest, query: str = "", key: str | None = None
) -> list[str]:
    body = await get_json(postline, f"/v1/emails?{query}", key)
    return [item["id"] for item in body["data"]]


# --- domains ------------------------------------------------------------------------------


async def test_domain_lifecycle(postline_factory: Factory) -> None:
    postline = await postline_factory(engine=False)
    client, admin = postline.client, postline.auth()
    response = await client.post("/v1/domains", json={"name": "Mail.Shop.TEST"}, headers=admin)
    assert response.status_code == 201, response.text
    created = response.json()
    assert isinstance(created["id"], str) and created["id"]
    assert created["name"] == "mail.shop.test"
    assert created["verified"] is False
    assert created["bounce_notifications"] is True
    selector = created["dkim_selector"]
    assert isinstance(selector, str) and selector
    records = {r["purpose"]: r for r in created["dns_records"]}
    assert set(records) == {"dkim", "spf", "dmarc", "return_path"}
    dkim = records["dkim"]
    assert dkim["type"] == "TXT"
    assert dkim["name"] == f"{selector}._domainkey.mail.shop.test"
    assert re.fullmatch(r"v=DKIM1; k=rsa; p=[A-Za-z0-9+/]{200,}={0,2}", dkim["value"])
    assert records["spf"]["type"] == "TXT" and records["spf"]["value"].startswith("v=spf1 ")
    assert records["dmarc"]["type"] == "TXT"
    assert records["dmarc"]["name"] == "_dmarc.mail.shop.test"
    assert records["dmarc"]["value"].startswith("v=DMARC1")
    assert records["return_path"]["name"].endswith(".mail.shop.test")
    for record in created["dns_records"]:
        assert set(record) >= {"type", "name", "value", "purpose"}

    listed = (await get_json(postline, "/v1/domains"))["data"]
    assert sorted(d["name"] for d in listed) == ["example.test", "mail.shop.test"]
    one = await get_json(postline, f"/v1/domains/{created['id']}")
    assert one["name"] == "mail.shop.test"
    assert one["dkim_selector"] == selector
    assert one["dns_records"] == created["dns_records"]

    patched = await client.patch(
        f"/v1/domains/{created['id']}", json={"bounce_notifications": False}, headers=admin
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["bounce_notifications"] is False
    assert (await get_json(postline, f"/v1/domains/{created['id']}"))[
        "bounce_notifications"
    ] is False

    deleted = await client.delete(f"/v1/domains/{created['id']}", headers=admin)
    assert deleted.status_code == 204, deleted.text
    assert (await client.get(f"/v1/domains/{created['id']}", headers=admin)).status_code == 404
    names = [d["name"] for d in (await get_json(postline, "/v1/domains"))["data"]]
    assert names == ["example.test"]


async def test_domain_that_has_sent_email_cannot_be_deleted(postline_factory: Factory) -> None:
    postline = await postline_factory(engine=False)
    sent = await postline.send(to="alice@dest.test")
    example = await domain_id(postline, "example.test")
    response = await postline.client.delete(f"/v1/domains/{example}", headers=postline.auth())
    assert response.status_code == 409, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert (await get_json(postline, f"/v1/domains/{example}"))["name"] == "example.test"
    assert (await postline.email(sent["id"]))["status"] == "queued"


# --- API keys -----------------------------------------------------------------------------


async def test_api_key_is_shown_once_listed_without_secret_and_revoked_at_once(
    postline_factory: Factory,
) -> None:
    postline = await postline_factory(engine=False)
    created = await new_key(postline, "ci deploys")
    assert created["name"] == "ci deploys"
    assert created["domain"] is None
    secret = created["key"]
    assert isinstance(secret, str) and secret.startswith("pl_") and len(secret) >= 20
    assert secret != postline.admin_key

    listing = await postline.client.get("/v1/api-keys", headers=postline.auth())
    assert listing.status_code == 200, listing.text
    assert secret not in listing.text
    assert postline.admin_key not in listing.text
    listed = {k["id"]: k for k in listing.json()["data"]}
    assert listed[created["id"]]["name"] == "ci deploys"
    assert "key" not in listed[created["id"]]

    assert (
        await postline.client.get("/v1/emails", headers=postline.auth(secret))
    ).status_code == 200
    revoke = await postline.client.delete(f"/v1/api-keys/{created['id']}", headers=postline.auth())
    assert revoke.status_code == 204, revoke.text
    assert (
        await postline.client.get("/v1/emails", headers=postline.auth(secret))
    ).status_code == 401
    # The admin key is untouched.
    assert (await postline.client.get("/v1/emails", headers=postline.auth())).status_code == 200


async def test_keys_are_stored_hashed(postline_factory: Factory) -> None:
    postline = await postline_factory(engine=False)
    created = [await new_key(postline, "plain"), await new_key(postline, "scoped", "example.test")]
    secrets = [c["key"] for c in created] + [postline.admin_key]
    async with postline.services.db.read() as conn:
        rows = (await conn.execute(select(api_keys))).mappings().all()
    assert len(rows) == 3
    for row in rows:
        for column, value in row.items():
            for secret in secrets:
                assert secret not in str(value), f"api_keys.{column} holds a plaintext key"
                # Not even the random part without its prefix.
                assert secret.removeprefix("pl_") not in str(value), column


async def test_scoped_key_sends_and_sees_only_its_domain(postline_factory: Factory) -> None:
    postline = await postline_factory(engine=False, domains=("example.test", "second.test"))
    scoped = await new_key(postline, "shop", "example.test")
    assert scoped["domain"] == "example.test"
    key = scoped["key"]

    own = await postline.send(key, to="alice@dest.test")
    foreign_try = await postline.client.post(
        "/v1/emails",
        json={"from": "x@second.test", "to": "bob@dest.test", "subject": "s", "text": "t"},
        headers=postline.auth(key),
    )
    assert foreign_try.status_code == 403, foreign_try.text
    foreign = await postline.send(**{"from": "x@second.test", "to": "bob@dest.test"})

    assert await list_ids(postline, key=key) == [own["id"]]
    # Naming another domain is refused, as on every route that names one.
    foreign_filter = await postline.client.get(
        "/v1/emails?domain=second.test", headers=postline.auth(key)
    )
    assert foreign_filter.status_code == 403, foreign_filter.text
    assert await list_ids(postline, "recipient=bob@dest.test", key=key) == []
    assert sorted(await list_ids(postline)) == sorted([own["id"], foreign["id"]])

    domains = (await get_json(postline, "/v1/domains", key))["data"]
    assert [d["name"] for d in domains] == ["example.test"]
    assert (await get_json(postline, f"/v1/domains/{domains[0]['id']}", key))[
        "name"
    ] == "example.test"

    assert (await postline.email(own["id"], key))["id"] == own["id"]
    hidden = await postline.client.get(f"/v1/emails/{foreign['id']}", headers=postline.auth(key))
    assert hidden.status_code == 404, hidden.text


# --- idempotency --------------------------------------------------------------------------


async def test_idempotent_repeat_returns_the_first_answer_and_sends_once(
    postline: PostlineUnderTest, fake_mx: FakeMX
) -> None:
    body = {
        "from": "Shop <orders@example.test>",
        "to": "buyer@dest.test",
        "subject": "Order 1001",
        "text": "Thanks!",
        "tags": {"order": "1001"},
    }
    headers = {**postline.auth(), "Idempotency-Key": "order-1001"}
    first = await postline.client.post("/v1/emails", json=body, headers=headers)
    second = await postline.client.post("/v1/emails", json=body, headers=headers)
    assert first.status_code == 202, first.text
    assert second.status_code == 202, second.text
    assert second.json() == first.json()
    email_id = first.json()["id"]
    assert await list_ids(postline) == [email_id]

    await postline.wait_for_status(email_id, ["delivered"])
    await fake_mx.wait_for_messages(1)
    # Repeating after delivery still replays, and sends nothing new.
    third = await postline.client.post("/v1/emails", json=body, headers=headers)
    assert third.status_code == 202 and third.json()["id"] == email_id
    assert await list_ids(postline) == [email_id]
    assert len(fake_mx.received) == 1
    assert fake_mx.received[0].rcpt_tos == ["buyer@dest.test"]

    changed = await postline.client.post(
        "/v1/emails", json={**body, "subject": "Order 1002"}, headers=headers
    )
    assert changed.status_code == 409, changed.text

    # Idempotency keys belong to the API key that used them.
    other = await new_key(postline, "second client")
    independent = await postline.client.post(
        "/v1/emails",
        json=body,
        headers={**postline.auth(other["key"]), "Idempotency-Key": "order-1001"},
    )
    assert independent.status_code == 202, independent.text
    assert independent.json()["id"] != email_id
    assert sorted(await list_ids(postline)) == sorted([email_id, independent.json()["id"]])


# --- batch --------------------------------------------------------------------------------


async def test_batch_of_three_is_accepted_and_delivered(
    postline: PostlineUnderTest, fake_mx: FakeMX
) -> None:
    batch = [
        {
            "from": "sender@example.test",
            "to": f"user{i}@dest.test",
            "subject": f"Batch {i}",
            "text": f"Body {i}",
        }
        for i in range(3)
    ]
    response = await postline.client.post("/v1/emails/batch", json=batch, headers=postline.auth())
    assert response.status_code == 202, response.text
    data = response.json()["data"]
    assert len(data) == 3
    assert len({item["id"] for item in data}) == 3
    for i, item in enumerate(data):
        assert item["message_id"].startswith("<") and item["message_id"].endswith(">")
        assert item["recipients"] == [{"address": f"user{i}@dest.test", "status": "queued"}]
    for item in data:
        detail = await postline.wait_for_status(item["id"], ["delivered"])
        assert detail["recipients"][0]["status"] == "delivered"
    received = await fake_mx.wait_for_messages(3)
    assert sorted(tuple(m.rcpt_tos) for m in received) == [
        ("user0@dest.test",),
        ("user1@dest.test",),
        ("user2@dest.test",),
    ]


# --- the send log -------------------------------------------------------------------------


async def test_send_log_is_newest_first_and_cursor_pages_visit_each_once(
    postline_factory: Factory,
) -> None:
    postline = await postline_factory(engine=False)
    sent = []
    for i in range(5):
        sent.append((await postline.send(to=f"r{i}@dest.test", subject=f"#{i}"))["id"])
        await next_millisecond()
    newest_first = list(reversed(sent))
    body = await get_json(postline, "/v1/emails")
    assert [e["id"] for e in body["data"]] == newest_first
    assert body["next_cursor"] is None
    for item in body["data"]:
        assert set(item) >= ITEM_FIELDS
        assert item["source"] == "api"
        assert item["status"] == "queued"
        assert item["recipient_count"] == 1
        assert RFC3339_UTC.match(item["created_at"]) and RFC3339_UTC.match(item["updated_at"])

    seen: list[str] = []
    pages = 0
    cursor: str | None = None
    while True:
        query = "limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = await get_json(postline, f"/v1/emails?{query}")
        pages += 1
        assert 1 <= len(page["data"]) <= 2
        seen += [e["id"] for e in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert pages < 10, "pagination does not end"
    assert seen == newest_first
    assert pages == 3


async def test_send_log_filters(postline_factory: Factory) -> None:
    postline = await postline_factory(engine=False, domains=("example.test", "second.test"))
    example = await domain_id(postline, "example.test")
    async with postline.services.db.write() as conn:
        await conn.execute(
            insert(suppressions).values(
                id=new_id("sup_"),
                domain_id=example,
                address="blocked@dest.test",
                reason="manual",
                created_at=datetime.now(UTC),
            )
        )
    later = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    bodies: list[dict[str, Any]] = [
        {"to": "alice@dest.test", "tags": {"kind": "welcome"}},
        {
            "to": "bob@dest.test",
            "from": "Billing <billing@example.test>",
            "tags": {"kind": "receipt"},
        },
        {"to": "alice@dest.test", "cc": "carol@other.test", "scheduled_at": later},
        {"to": "blocked@dest.test"},
        {"to": "dave@dest.test", "from": "news@second.test", "tags": {"kind": "welcome"}},
    ]
    emails: list[dict[str, Any]] = []
    for body in bodies:
        emails.append(await postline.send(**body))
        await next_millisecond()
    ids = [e["id"] for e in emails]

    async def matching(query: str) -> set[str]:
        return set(await list_ids(postline, query))

    assert await matching("status=scheduled") == {ids[2]}
    assert await matching("status=suppressed") == {ids[3]}
    assert await matching("status=queued") == {ids[0], ids[1], ids[4]}
    assert await matching("status=delivered") == set()
    assert await matching("recipient=alice@dest.test") == {ids[0], ids[2]}
    assert await matching("recipient=carol@other.test") == {ids[2]}
    assert await matching("recipient=nobody@dest.test") == set()
    assert await matching("from=billing@example.test") == {ids[1]}
    assert await matching("from=Billing%20%3Cbilling@example.test%3E") == {ids[1]}
    assert await matching("from=sender@example.test") == {ids[0], ids[2], ids[3]}
    assert await matching("domain=second.test") == {ids[4]}
    assert await matching("domain=example.test") == set(ids[:4])
    unknown = await postline.client.get("/v1/emails?domain=unknown.test", headers=postline.auth())
    assert unknown.status_code == 422, unknown.text
    assert await matching("tag=kind:welcome") == {ids[0], ids[4]}
    assert await matching("tag=kind:receipt") == {ids[1]}
    assert await matching("tag=kind:nothing") == set()
    message_id = emails[1]["message_id"]
    assert await matching(f"message_id={message_id}") == {ids[1]}
    assert await matching("status=queued&tag=kind:welcome&domain=example.test") == {ids[0]}

    third = await postline.email(ids[2])
    moment = third["created_at"].replace("Z", "%2B00:00")  # RFC 3339, URL-encoded
    assert await matching(f"since={moment}") == set(ids[2:])
    assert await matching(f"until={moment}") == set(ids[:2])
    assert await matching(f"since={moment}&until={moment}") == set()
    far = (datetime.now(UTC) + timedelta(days=1)).isoformat().replace("+00:00", "Z")
    assert await matching(f"since={far}") == set()
    assert await matching(f"until={far}") == set(ids)


async def test_email_detail_has_recipients_timeline_and_events(
    postline: PostlineUnderTest, fake_mx: FakeMX
) -> None:
    sent = await postline.send(
        to="alice@dest.test",
        cc=["carol@dest.test"],
        bcc="bob@other.test",
        subject="Detail",
        tags={"kind": "detail"},
    )
    assert [r["status"] for r in sent["recipients"]] == ["queued"] * 3
    detail = await postline.wait_for_status(sent["id"], ["delivered"])
    assert set(detail) >= ITEM_FIELDS | {"recipients", "events"}
    assert detail["id"] == sent["id"]
    assert detail["message_id"] == sent["message_id"]
    assert detail["from"] == "Sender <sender@example.test>"
    assert detail["subject"] == "Detail"
    assert detail["source"] == "api"
    assert detail["recipient_count"] == 3
    assert detail["tags"] == {"kind": "detail"}
    kinds = {r["address"]: r["kind"] for r in detail["recipients"]}
    assert kinds == {"alice@dest.test": "to", "carol@dest.test": "cc", "bob@other.test": "bcc"}
    for recipient in detail["recipients"]:
        assert set(recipient) >= RECIPIENT_FIELDS
        assert recipient["status"] == "delivered"
        assert recipient["smtp_code"] == 250
        assert recipient["attempts"] == 1
        assert recipient["bounce_type"] is None
        assert RFC3339_UTC.match(recipient["updated_at"])
        (step,) = recipient["timeline"]
        assert set(step) >= TIMELINE_FIELDS
        assert step["attempt"] == 1 and step["status"] == "delivered"
        assert step["mx_host"] in {"mx.dest.test", "mx.other.test"}
        assert isinstance(step["duration_ms"], int) and step["duration_ms"] >= 0
        assert RFC3339_UTC.match(step["at"])
    events = detail["events"]
    for event in events:
        assert set(event) >= EVENT_FIELDS
        assert isinstance(event["id"], str) and event["id"]
        assert RFC3339_UTC.match(event["created_at"])
    assert len({e["id"] for e in events}) == len(events)
    by_type: dict[str, set[str]] = {}
    for event in events:
        by_type.setdefault(event["type"], set()).add(event["recipient"])
    assert by_type == {
        "email.queued": set(kinds),
        "email.delivered": set(kinds),
    }
    await fake_mx.wait_for_messages(2)  # one transaction per destination domain


# --- cancel -------------------------------------------------------------------------------


async def test_cancel_a_scheduled_email(postline: PostlineUnderTest, fake_mx: FakeMX) -> None:
    in_an_hour = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    sent = await postline.send(to=["a@dest.test", "b@dest.test"], scheduled_at=in_an_hour)
    assert [r["status"] for r in sent["recipients"]] == ["scheduled", "scheduled"]
    assert (await postline.email(sent["id"]))["status"] == "scheduled"

    response = await postline.client.post(
        f"/v1/emails/{sent['id']}/cancel", headers=postline.auth()
    )
    assert response.status_code == 200, response.text
    cancelled = response.json()
    assert cancelled["id"] == sent["id"]
    assert cancelled["status"] == "cancelled"
    assert [r["status"] for r in cancelled["recipients"]] == ["cancelled", "cancelled"]
    cancel_events = [e for e in cancelled["events"] if e["type"] == "email.cancelled"]
    assert sorted(e["recipient"] for e in cancel_events) == ["a@dest.test", "b@dest.test"]
    assert (await postline.email(sent["id"]))["status"] == "cancelled"

    # A later email goes through the same engine: once it arrives, the cancelled one
    # has had every chance to be sent too, and was not.
    after = await postline.send(to="c@dest.test")
    await postline.wait_for_status(after["id"], ["delivered"])
    received = await fake_mx.wait_for_messages(1)
    assert [m.rcpt_tos for m in received] == [["c@dest.test"]]
    assert (await postline.email(sent["id"]))["status"] == "cancelled"


# --- suppression --------------------------------------------------------------------------


async def test_suppressed_recipient_is_not_sent_to(
    postline: PostlineUnderTest, fake_mx: FakeMX
) -> None:
    example = await domain_id(postline, "example.test")
    async with postline.services.db.write() as conn:
        await conn.execute(
            insert(suppressions).values(
                id=new_id("sup_"),
                domain_id=example,
                address="blocked@dest.test",
                reason="manual",
                created_at=datetime.now(UTC),
            )
        )
    sent = await postline.send(to=["blocked@dest.test", "fine@dest.test"])
    statuses = {r["address"]: r["status"] for r in sent["recipients"]}
    assert statuses == {"blocked@dest.test": "suppressed", "fine@dest.test": "queued"}

    detail = await postline.wait_until_final(sent["id"])
    statuses = {r["address"]: r["status"] for r in detail["recipients"]}
    assert statuses == {"blocked@dest.test": "suppressed", "fine@dest.test": "delivered"}
    suppressed_events = [e for e in detail["events"] if e["type"] == "email.suppressed"]
    assert [e["recipient"] for e in suppressed_events] == ["blocked@dest.test"]
    blocked = next(r for r in detail["recipients"] if r["address"] == "blocked@dest.test")
    assert blocked["attempts"] == 0 and blocked["timeline"] == []

    received = await fake_mx.wait_for_messages(1)
    assert [m.rcpt_tos for m in received] == [["fine@dest.test"]]
    assert fake_mx.messages_for("blocked@dest.test") == []


# --- operations ---------------------------------------------------------------------------


def metric_value(text: str, sample: str) -> float:
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == sample:
            return float(value)
    raise AssertionError(f"{sample} not in /metrics:\n{text}")


async def test_health_readiness_and_metrics(postline: PostlineUnderTest, fake_mx: FakeMX) -> None:
    # No key needed for these three.
    healthz = await postline.client.get("/healthz")
    assert healthz.status_code == 200, healthz.text
    readyz = await postline.client.get("/readyz")
    assert readyz.status_code == 200, readyz.text

    sent = await postline.send(to="metrics@dest.test")
    await postline.wait_for_status(sent["id"], ["delivered"])
    metrics = await postline.client.get("/metrics")
    assert metrics.status_code == 200, metrics.text
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert metric_value(text, 'postline_emails_accepted_total{source="api"}') == 1
    assert metric_value(text, 'postline_recipient_outcomes_total{status="delivered"}') == 1
    await fake_mx.wait_for_messages(1)
