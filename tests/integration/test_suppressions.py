"""The suppression list: automatic on recipient-invalid hard bounces, enforced twice."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import event

from postline.config import normalize_database_url
from postline.domains import create_domain
from postline.ids import new_id
from postline.store import domains as domain_store
from postline.store import suppressions as suppression_store
from postline.store.db import Database
from postline.store.migrate import upgrade_async
from postline.store.sealing import SecretBox, new_key
from postline.store.types import utcnow
from tests.harness import FakeMX
from tests.harness.postline import Factory, PostlineUnderTest


async def _suppressions(pl: PostlineUnderTest, **params: str) -> list[dict[str, Any]]:
    response = await pl.client.get("/v1/suppressions", params=params, headers=pl.auth())
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


async def test_hard_bounce_suppresses_and_the_next_send_is_suppressed(
    postline: PostlineUnderTest, fake_mx: FakeMX
) -> None:
    fake_mx.on_rcpt("gone@dest.test", "550 5.1.1 <gone@dest.test>: Recipient address rejected")
    first = await postline.send(to="gone@dest.test")
    await postline.wait_for_status(first["id"], ["bounced"])
    (entry,) = await _suppressions(postline, domain="example.test")
    assert entry["address"] == "gone@dest.test"
    assert entry["reason"] == "hard_bounce"
    assert entry["source_email_id"] == first["id"]
    assert entry["domain"] == "example.test"
    assert "5.1.1" in entry["detail"]

    second = await postline.send(to=["gone@dest.test", "fine@dest.test"])
    assert {r["address"]: r["status"] for r in second["recipients"]} == {
        "gone@dest.test": "suppressed",
        "fine@dest.test": "queued",
    }
    detail = await postline.wait_for_status(second["id"], ["partially_delivered"])
    types = [(e["type"], e["recipient"]) for e in detail["events"]]
    assert ("email.suppressed", "gone@dest.test") in types
    assert [m.rcpt_tos for m in fake_mx.received] == [["fine@dest.test"]]


async def test_a_block_or_a_full_mailbox_does_not_suppress(
    postline: PostlineUnderTest, fake_mx: FakeMX
) -> None:
    fake_mx.on_rcpt("blocked@dest.test", "554 5.7.1 Service unavailable; client host blocked")
    fake_mx.on_rcpt("full@dest.test", "552 5.2.2 Mailbox full")
    sent = await postline.send(to=["blocked@dest.test", "full@dest.test"])
    detail = await postline.wait_for_status(sent["id"], ["bounced"])
    assert {r["bounce_type"] for r in detail["recipients"]} == {"block", "soft"}
    assert await _suppressions(postline) == []


async def test_suppressed_while_waiting_for_a_retry_is_not_sent(
    postline_factory: Factory, fake_mx: FakeMX
) -> None:
    pl = await postline_factory(retry_schedule="1")
    fake_mx.on_rcpt("later@dest.test", "451 4.3.0 try later", "250 OK")
    sent = await pl.send(to="later@dest.test")
    await pl.wait_for(
        sent["id"], lambda d: d["recipients"][0]["status"] == "deferred", what="a deferral"
    )
    # The suppression comes before the retry, however slow the machine: no worker runs
    # between the two (the retry is due a second after the deferral).
    await pl.stop_engine()
    added = await pl.client.post(
        "/v1/suppressions",
        json={"address": "later@dest.test", "domain": "example.test", "reason": "unsubscribe"},
        headers=pl.auth(),
    )
    assert added.status_code == 201, added.text
    pl.start_engine()
    detail = await pl.wait_for_status(sent["id"], ["suppressed"])
    (recipient,) = detail["recipients"]
    assert [t["status"] for t in recipient["timeline"]] == ["deferred"]  # no fake attempt row
    assert detail["events"][-1]["type"] == "email.suppressed"
    assert fake_mx.received == []


async def test_suppression_api_crud_and_scoping(postline: PostlineUnderTest) -> None:
    await postline.client.post(
        "/v1/domains", json={"name": "other.example"}, headers=postline.auth()
    )
    scoped = await postline.client.post(
        "/v1/api-keys", json={"name": "s", "domain": "example.test"}, headers=postline.auth()
    )
    key = scoped.json()["key"]

    no_domain = await postline.client.post(
        "/v1/suppressions", json={"address": "a@x.test"}, headers=postline.auth()
    )
    assert no_domain.status_code == 422  # an admin key must say which domain

    created = await postline.client.post(
        "/v1/suppressions", json={"address": "A@X.test"}, headers=postline.auth(key)
    )
    assert created.status_code == 201, created.text
    entry = created.json()
    assert entry["address"] == "a@x.test" and entry["reason"] == "manual"
    assert entry["domain"] == "example.test"
    again = await postline.client.post(
        "/v1/suppressions", json={"address": "a@x.test"}, headers=postline.auth(key)
    )
    assert again.status_code == 409
    elsewhere = await postline.client.post(
        "/v1/suppressions",
        json={"address": "b@x.test", "domain": "other.example"},
        headers=postline.auth(key),
    )
    assert elsewhere.status_code == 403
    other = await postline.client.post(
        "/v1/suppressions",
        json={"address": "c@x.test", "domain": "other.example"},
        headers=postline.auth(),
    )
    assert other.status_code == 201
    # The scoped key sees only its domain's entries, and cannot read the other one.
    assert [e["address"] for e in await _suppressions_with(postline, key)] == ["a@x.test"]
    hidden = await postline.client.get(
        f"/v1/suppressions/{other.json()['id']}", headers=postline.auth(key)
    )
    assert hidden.status_code == 404
    by_reason = await _suppressions(postline, reason="manual")
    assert {e["address"] for e in by_reason} == {"a@x.test", "c@x.test"}

    got = await postline.client.get(f"/v1/suppressions/{entry['id']}", headers=postline.auth(key))
    assert got.json() == entry
    deleted = await postline.client.delete(
        f"/v1/suppressions/{entry['id']}", headers=postline.auth(key)
    )
    assert deleted.status_code == 204
    gone = await postline.client.get(f"/v1/suppressions/{entry['id']}", headers=postline.auth(key))
    assert gone.status_code == 404


async def _suppressions_with(pl: PostlineUnderTest, key: str) -> list[dict[str, Any]]:
    response = await pl.client.get("/v1/suppressions", headers=pl.auth(key))
    data: list[dict[str, Any]] = response.json()["data"]
    return data


async def test_an_expiring_suppression_gives_way_to_a_later_or_permanent_one(
    database_url: str,
) -> None:
    """A domain-level bounce suppresses until a time; a later verdict about the same
    address extends it or makes it permanent, never the other way round (both stores)."""
    url = normalize_database_url(database_url)
    await upgrade_async(url)
    db = Database(url, secrets=SecretBox(new_key(), "test"))  # the domain's DKIM key is sealed
    try:
        domain = await create_domain(db, "example.test")
        now = utcnow()
        soon, later = now + timedelta(hours=1), now + timedelta(hours=24)

        async def add(expires_at: datetime | None) -> None:
            async with db.write() as conn:
                await suppression_store.add_suppression(
                    conn,
                    suppression_id=new_id("sup_"),
                    domain_id=domain.id,
                    address="a@dest.test",
                    reason="hard_bounce",
                    now=now,
                    expires_at=expires_at,
                )

        async def expiry() -> datetime | None:
            async with db.read() as conn:
                where = suppression_store.SuppressionFilter(domain.id, "a@dest.test")
                (row,) = await suppression_store.list_suppressions(conn, where, None, 10)
            return row.expires_at

        await add(later)
        await add(soon)  # an earlier expiry does not shorten it
        assert await expiry() == later
        await add(None)  # an address-level hard bounce: for good
        assert await expiry() is None
        await add(later)  # and a domain-level one does not undo that
        assert await expiry() is None
    finally:
        await db.close()


async def test_a_batch_suppresses_per_sending_domain(postline_factory: Factory) -> None:
    """The batch asks the list once per sending domain: an address suppressed for one
    domain is suppressed in each of that domain's emails, and not in another domain's."""
    pl = await postline_factory(engine=False, domains=("example.test", "other.example"))
    added = await pl.client.post(
        "/v1/suppressions",
        json={"address": "gone@dest.test", "domain": "example.test"},
        headers=pl.auth(),
    )
    assert added.status_code == 201, added.text
    emails = [
        {"from": "a@example.test", "to": ["gone@dest.test", "fine@dest.test"]},
        {"from": "b@other.example", "to": ["gone@dest.test"]},
        {"from": "c@example.test", "to": ["gone@dest.test"]},
    ]
    body = [{**email, "subject": "Hi", "text": "Hi"} for email in emails]
    asked: list[str] = []

    @event.listens_for(pl.services.db.engine.sync_engine, "before_cursor_execute")
    def _count(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if "FROM suppressions" in statement:
            asked.append(statement)

    response = await pl.client.post("/v1/emails/batch", json=body, headers=pl.auth())
    assert response.status_code == 202, response.text
    # Once per sending domain, both addresses of example.test in one question.
    assert len(asked) == 2, asked
    statuses = [
        {r["address"]: r["status"] for r in item["recipients"]} for item in response.json()["data"]
    ]
    assert statuses == [
        {"gone@dest.test": "suppressed", "fine@dest.test": "queued"},
        {"gone@dest.test": "queued"},
        {"gone@dest.test": "suppressed"},
    ]


async def test_a_suppressed_address_is_suppressed_whatever_case_it_is_sent_in(
    postline: PostlineUnderTest, fake_mx: FakeMX
) -> None:
    """The list keeps addresses in lower case, and so does the accept: a send that spells
    a listed address with capitals is suppressed at accept all the same."""
    created = await postline.client.post(
        "/v1/suppressions",
        json={"address": "gone@dest.test", "domain": "example.test"},
        headers=postline.auth(),
    )
    assert created.status_code == 201, created.text
    sent = await postline.send(to=["Gone@Dest.TEST", "fine@dest.test"])
    assert {r["address"]: r["status"] for r in sent["recipients"]} == {
        "gone@dest.test": "suppressed",
        "fine@dest.test": "queued",
    }
    await postline.wait_for_status(sent["id"], ["partially_delivered"])
    assert [m.rcpt_tos for m in fake_mx.received] == [["fine@dest.test"]]


async def test_a_suppression_that_expires_suppresses_at_accept_until_it_ends(
    postline_factory: Factory,
) -> None:
    """A domain-level bounce suppresses until a time: a send before then is suppressed,
    one after it is not; a permanent entry always is. (Mutation testing: every listing
    the accept had met was permanent, and none was the first of its domain's addresses
    in order, which the accept asks about in sorted chunks.)"""
    pl = await postline_factory(engine=False)
    now = utcnow()
    listed = {
        "a-until-tomorrow@dest.test": now + timedelta(days=1),
        "b-ended@dest.test": now - timedelta(hours=1),
        "c-for-good@dest.test": None,
    }
    async with pl.services.db.write() as conn:
        domain = await domain_store.get_domain_by_name(conn, "example.test")
        assert domain is not None
        for address, expires_at in listed.items():
            await suppression_store.add_suppression(
                conn,
                suppression_id=new_id("sup_"),
                domain_id=domain.id,
                address=address,
                reason="hard_bounce",
                now=now - timedelta(days=1),
                expires_at=expires_at,
            )
    sent = await pl.send(to=[*listed, "d-never-listed@dest.test"])
    assert {r["address"]: r["status"] for r in sent["recipients"]} == {
        "a-until-tomorrow@dest.test": "suppressed",
        "b-ended@dest.test": "queued",
        "c-for-good@dest.test": "suppressed",
        "d-never-listed@dest.test": "queued",
    }
