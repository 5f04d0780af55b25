"""Resend's request shapes on Postline's routes, Resend's answer fields, and
``PATCH /v1/emails/{id}`` (reschedule), on the embedded queue and on Redis."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from postline.when import parse_natural
from tests.harness.postline import Factory, PostlineUnderTest


@pytest.fixture(params=["embedded", pytest.param("redis", marks=pytest.mark.redis)])
def topology(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The embedded queue (SQLite), or Redis (PostgreSQL, a fresh key prefix)."""
    if request.param == "embedded":
        return {}
    return {
        "database_url": request.getfixturevalue("postgres_url"),
        "queue_url": request.getfixturevalue("redis_url"),
        "queue_prefix": request.getfixturevalue("redis_prefix"),
    }


def _later(days: int = 2) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).isoformat()


async def _patch(pl: PostlineUnderTest, email_id: str, body: dict[str, Any]) -> Any:
    return await pl.client.patch(f"/v1/emails/{email_id}", json=body, headers=pl.auth())


async def _mime(pl: PostlineUnderTest, email_id: str) -> str:
    response = await pl.client.get(f"/v1/emails/{email_id}/content", headers=pl.auth())
    assert response.status_code == 200, response.text
    return response.text


# -- request shapes ---------------------------------------------------------------------------


async def test_tags_as_resends_list_read_as_the_map(postline_factory: Factory) -> None:
    pl = await postline_factory(engine=False)
    listed = await pl.send(
        to="a@dest.test",
        tags=[{"name": "category", "value": "welcome"}, {"name": "n", "value": ""}],
    )
    mapped = await pl.send(to="a@dest.test", tags={"category": "welcome", "n": ""})
    assert (await pl.email(listed["id"]))["tags"] == {"category": "welcome", "n": ""}
    assert (await pl.email(mapped["id"]))["tags"] == {"category": "welcome", "n": ""}
    found = await pl.client.get("/v1/emails?tag=category:welcome", headers=pl.auth())
    assert {e["id"] for e in found.json()["data"]} == {listed["id"], mapped["id"]}


@pytest.mark.parametrize(
    ("tags", "field", "words"),
    [
        ([{"name": "a", "value": "1"}, {"name": "a", "value": "2"}], "tags", "given twice"),
        ([{"name": "a"}], "tags", '"name": ..., "value": ...'),
        ([{"name": "a", "value": 1}], "tags", "must be strings"),
        ([{"name": "bad name", "value": "x"}], "tags", "must be 1-64 of"),
        ([{"name": "a", "value": "x" * 257}], "tags", "at most 256"),
        ([{"name": f"t{i}", "value": "x"} for i in range(21)], "tags", "at most 20 tags"),
        ("category", "tags", ""),
    ],
)
async def test_a_bad_tag_list_is_a_422_naming_tags(
    postline_factory: Factory, tags: Any, field: str, words: str
) -> None:
    pl = await postline_factory(engine=False)
    body = {"from": "sender@example.test", "to": "a@dest.test", "subject": "s", "text": "t"}
    response = await pl.client.post("/v1/emails", json={**body, "tags": tags}, headers=pl.auth())
    assert response.status_code == 422, response.text
    [error] = response.json()["errors"]
    assert error["field"] == field
    assert words in error["message"]


async def test_an_attachment_as_a_byte_array_with_a_guessed_type(
    postline_factory: Factory,
) -> None:
    pl = await postline_factory(engine=False)
    data = b"%PDF-1.4 not really\x00\xff"
    sent = await pl.send(
        to="a@dest.test",
        reply_to="replies@example.test",
        attachments=[
            {"filename": "invoice.pdf", "content": list(data)},
            {"filename": "notes.unknownext", "content": base64.b64encode(b"hi").decode()},
            {"filename": "x.txt", "content": list(b"text"), "content_type": None},
        ],
    )
    mime = await _mime(pl, sent["id"])
    assert "Content-Type: application/pdf" in mime
    assert base64.b64encode(data).decode() in mime.replace("\r\n", "")
    assert "Content-Type: application/octet-stream" in mime
    assert "Content-Type: text/plain" in mime
    assert "Reply-To: replies@example.test" in mime


@pytest.mark.parametrize("content", [[256], [-1], [1.5], [True], ["a"], [[1]], "not base64!"])
async def test_a_bad_attachment_content_is_a_422(postline_factory: Factory, content: Any) -> None:
    pl = await postline_factory(engine=False)
    body = {
        "from": "sender@example.test",
        "to": "a@dest.test",
        "subject": "s",
        "text": "t",
        "attachments": [{"filename": "a.bin", "content": content}],
    }
    response = await pl.client.post("/v1/emails", json=body, headers=pl.auth())
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == "attachments[0].content"


async def test_scheduled_at_in_resends_words(postline_factory: Factory) -> None:
    pl = await postline_factory(engine=False)
    before = datetime.now(UTC)
    sent = await pl.send(to="a@dest.test", scheduled_at="in 2 hours")
    after = datetime.now(UTC)
    detail = await pl.email(sent["id"])
    assert detail["status"] == "scheduled" and detail["last_event"] == "scheduled"
    at = datetime.fromisoformat(detail["scheduled_at"])
    assert before + timedelta(hours=2) - timedelta(milliseconds=1) <= at
    assert at <= after + timedelta(hours=2)

    tomorrow = await pl.send(to="a@dest.test", scheduled_at="tomorrow at 9:30 pm")
    expected = parse_natural("tomorrow at 9:30 pm", datetime.now(UTC))
    scheduled = (await pl.email(tomorrow["id"]))["scheduled_at"]
    assert datetime.fromisoformat(scheduled) == expected


async def test_scheduled_at_not_understood_is_a_422_naming_the_forms(
    postline_factory: Factory,
) -> None:
    pl = await postline_factory(engine=False)
    body = {"from": "sender@example.test", "to": "a@dest.test", "subject": "s", "text": "t"}
    response = await pl.client.post(
        "/v1/emails", json={**body, "scheduled_at": "whenever you like"}, headers=pl.auth()
    )
    assert response.status_code == 422, response.text
    [error] = response.json()["errors"]
    assert error["field"] == "scheduled_at"
    assert "'whenever you like'" in error["message"]
    assert "tomorrow at 9:30 am" in error["message"] and "ISO 8601" in error["message"]


async def test_an_idempotent_retry_of_a_phrase_is_the_same_request(
    postline_factory: Factory,
) -> None:
    """ "in 10 min" names another moment at each retry: still the same request."""
    pl = await postline_factory(engine=False)
    body = {
        "from": "sender@example.test",
        "to": "a@dest.test",
        "subject": "s",
        "text": "t",
        "scheduled_at": "in 10 min",
    }
    headers = {**pl.auth(), "Idempotency-Key": "k-1"}
    first = await pl.client.post("/v1/emails", json=body, headers=headers)
    again = await pl.client.post("/v1/emails", json=body, headers=headers)
    assert first.status_code == again.status_code == 202, again.text
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.json()["id"] == first.json()["id"]


# -- answer fields ----------------------------------------------------------------------------


async def test_emails_carry_resends_fields(postline_factory: Factory) -> None:
    pl = await postline_factory(engine=False)
    sent = await pl.send(to=["a@dest.test", "b@dest.test"], cc="c@dest.test", scheduled_at=_later())
    detail = await pl.email(sent["id"])
    assert detail["object"] == "email"
    assert detail["to"] == ["a@dest.test", "b@dest.test"]
    assert detail["last_event"] == "scheduled"
    listed = (await pl.client.get("/v1/emails", headers=pl.auth())).json()
    assert listed["object"] == "list" and listed["has_more"] is False
    [item] = listed["data"]
    assert (item["object"], item["to"], item["last_event"]) == (
        "email",
        ["a@dest.test", "b@dest.test"],
        "scheduled",
    )
    await pl.client.post(f"/v1/emails/{sent['id']}/cancel", headers=pl.auth())
    assert (await pl.email(sent["id"]))["last_event"] == "canceled"


async def test_keys_and_domains_carry_resends_fields(postline_factory: Factory) -> None:
    pl = await postline_factory(engine=False)
    created = await pl.client.post("/v1/api-keys", json={"name": "ci"}, headers=pl.auth())
    body = created.json()
    assert body["token"] == body["key"] and body["object"] == "api_key"
    domains = (await pl.client.get("/v1/domains", headers=pl.auth())).json()
    assert domains["object"] == "list"
    domain = domains["data"][0]
    assert domain["records"] == domain["dns_records"]
    assert (domain["status"], domain["verified"]) == ("not_started", False)


async def test_a_delete_answers_json_to_a_client_that_asks_for_it(
    postline_factory: Factory,
) -> None:
    pl = await postline_factory(engine=False)
    plain = (await pl.client.post("/v1/api-keys", json={"name": "a"}, headers=pl.auth())).json()
    sdk = (await pl.client.post("/v1/api-keys", json={"name": "b"}, headers=pl.auth())).json()
    gone = await pl.client.delete(f"/v1/api-keys/{plain['id']}", headers=pl.auth())
    assert gone.status_code == 204 and gone.content == b""
    json_headers = {**pl.auth(), "Accept": "application/json"}
    answered = await pl.client.delete(f"/v1/api-keys/{sdk['id']}", headers=json_headers)
    assert answered.status_code == 200
    assert answered.json() == {"object": "api_key", "id": sdk["id"], "deleted": True}


# -- PATCH: reschedule ------------------------------------------------------------------------


async def test_a_reschedule_to_a_past_time_sends_now(
    postline_factory: Factory, topology: dict[str, Any]
) -> None:
    """Scheduled two days out; moved to a time already past, the engine delivers it now:
    the job moved (at its old time nothing would happen within the test)."""
    pl = await postline_factory(engine=False, **topology)
    sent = await pl.send(to=["a@dest.test", "b@other.test"], scheduled_at=_later())
    response = await _patch(pl, sent["id"], {"scheduled_at": "2020-01-01T00:00:00Z"})
    assert response.status_code == 200, response.text
    assert response.json()["object"] == "email"
    assert await pl.services.queue.depth() == {"dest.test": 1, "other.test": 1}
    pl.start_engine()
    detail = await pl.wait_for_status(sent["id"], ["delivered"])
    assert {r["status"] for r in detail["recipients"]} == {"delivered"}


async def test_a_reschedule_moves_the_time_and_keeps_one_job_per_destination(
    postline_factory: Factory, topology: dict[str, Any]
) -> None:
    pl = await postline_factory(engine=False, **topology)
    sent = await pl.send(to=["a@dest.test", "b@dest.test", "c@other.test"], scheduled_at=_later())
    response = await _patch(pl, sent["id"], {"scheduled_at": "tomorrow at 9am", "id": sent["id"]})
    assert response.status_code == 200, response.text
    expected = parse_natural("tomorrow at 9am", datetime.now(UTC))
    detail = await pl.email(sent["id"])
    assert datetime.fromisoformat(detail["scheduled_at"]) == expected
    assert {r["status"] for r in detail["recipients"]} == {"scheduled"}
    assert await pl.services.queue.depth() == {"dest.test": 1, "other.test": 1}
    # Not due: nothing to lease.
    assert await pl.services.queue.lease("test-worker", 10, 30) == []


async def test_a_reschedule_of_an_email_not_scheduled_is_a_409(
    postline_factory: Factory, topology: dict[str, Any]
) -> None:
    pl = await postline_factory(engine=False, **topology)
    queued = await pl.send(to="a@dest.test")
    response = await _patch(pl, queued["id"], {"scheduled_at": "in 1 hour"})
    assert response.status_code == 409, response.text
    assert response.json()["message"] == "no recipient of this email is still scheduled"
    scheduled = await pl.send(to="a@dest.test", scheduled_at=_later())
    await pl.client.post(f"/v1/emails/{scheduled['id']}/cancel", headers=pl.auth())
    response = await _patch(pl, scheduled["id"], {"scheduled_at": "in 1 hour"})
    assert response.status_code == 409, response.text
    assert await pl.services.queue.depth() == {"dest.test": 1}  # the queued one's


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"scheduled_at": "someday"}, "scheduled_at"),
        ({"scheduled_at": "in 31 days"}, "scheduled_at"),
        ({"scheduled_at": "2026-01-01T00:00:00"}, "scheduled_at"),
        ({}, "scheduled_at"),
        ({"scheduled_at": "in 1 hour", "id": "em_other"}, "id"),
        ({"scheduled_at": "in 1 hour", "subject": "new"}, "subject"),
    ],
)
async def test_a_bad_reschedule_is_a_422_naming_the_field(
    postline_factory: Factory, body: dict[str, Any], field: str
) -> None:
    pl = await postline_factory(engine=False)
    sent = await pl.send(to="a@dest.test", scheduled_at=_later())
    response = await _patch(pl, sent["id"], body)
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == field
    assert (await pl.email(sent["id"]))["scheduled_at"] is not None


async def test_a_reschedule_of_an_unknown_email_is_a_404(postline_factory: Factory) -> None:
    pl = await postline_factory(engine=False)
    response = await _patch(pl, "em_nothing", {"scheduled_at": "in 1 hour"})
    assert response.status_code == 404, response.text
    assert response.json()["name"] == "not_found"


async def test_a_byte_array_attachment_counts_towards_the_message_cap(
    postline_factory: Factory,
) -> None:
    """Counted before validation as the bytes it holds, like base64 once decoded."""
    pl = await postline_factory(engine=False, max_message_bytes=5000)
    body = {
        "from": "sender@example.test",
        "to": "a@dest.test",
        "subject": "s",
        "text": "t",
        "attachments": [{"filename": "big.bin", "content": [7] * 6000}],
    }
    response = await pl.client.post("/v1/emails", json=body, headers=pl.auth())
    assert response.status_code == 413, response.text
    assert response.json()["errors"][0]["field"] == "attachments"


async def test_a_key_scoped_by_resends_domain_id_and_permission(postline_factory: Factory) -> None:
    pl = await postline_factory(engine=False, domains=("example.test", "other.test"))
    domains = (await pl.client.get("/v1/domains", headers=pl.auth())).json()["data"]
    ids = {d["name"]: d["id"] for d in domains}
    created = await pl.client.post(
        "/v1/api-keys",
        json={"name": "shop", "permission": "sending_access", "domain_id": ids["other.test"]},
        headers=pl.auth(),
    )
    assert created.status_code == 201, created.text
    assert created.json()["domain"] == "other.test"
    full = await pl.client.post(
        "/v1/api-keys", json={"name": "ops", "permission": "full_access"}, headers=pl.auth()
    )
    assert full.status_code == 201 and full.json()["domain"] is None, full.text


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"permission": "sending_access"}, "body", "scoped to one domain"),
        ({"permission": "full_access", "domain": "example.test"}, "body", "has no domain"),
        ({"domain": "example.test", "domain_id": "dom_x"}, "body", "not both"),
        ({"domain_id": "dom_nothing"}, "domain_id", "no domain dom_nothing"),
        ({"permission": "everything"}, "permission", ""),
    ],
)
async def test_a_key_scope_that_postline_cannot_give_is_a_422(
    postline_factory: Factory, body: dict[str, Any], field: str, words: str
) -> None:
    pl = await postline_factory(engine=False)
    response = await pl.client.post("/v1/api-keys", json={"name": "k", **body}, headers=pl.auth())
    assert response.status_code == 422, response.text
    [error] = response.json()["errors"]
    assert error["field"] == field
    assert words in error["message"]
