"""Every error answer of the API (docs/API.md, "Errors") that applies today.

Each one is an RFC 9457 problem (``application/problem+json`` with type, title,
status and detail; ``errors[].field`` naming the field of a 422; and Resend's
``name``, ``message`` and ``statusCode``), and a refused submission leaves nothing
behind: no email in the send log, no body in the spool. A client that does not ask for
``application/problem+json`` by name gets the same body as ``application/json``.
"""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from postline.accept import COMPOSE_CHUNK
from postline.spool.spares import SPARE_DIR
from postline.store.schema import idempotency_keys
from tests.harness.postline import Factory, PostlineUnderTest

PROBLEM_JSON = "application/problem+json"
JSON_HEADERS = {"Content-Type": "application/json"}


def valid_email(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "from": "Sender <sender@example.test>",
        "to": ["alice@dest.test"],
        "subject": "Hello",
        "text": "Hello from Postline",
    }
    body.update(overrides)
    return body


def without(key: str, **overrides: Any) -> dict[str, Any]:
    body = valid_email(**overrides)
    del body[key]
    return body


def assert_problem(
    response: httpx.Response, status: int, field: str | tuple[str, ...] | None = None
) -> dict[str, Any]:
    """The answer is a problem object of this status; a 422 names ``field`` in errors[]."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON), response.headers
    body: dict[str, Any] = response.json()
    for name in ("type", "title", "detail"):
        assert isinstance(body.get(name), str) and body[name], body
    assert body["status"] == status, body
    assert body["type"] == f"urn:postline:problem:{body['title'].lower().replace(' ', '-')}", body
    # The members the Resend SDKs read, on every problem.
    assert (body["message"], body["statusCode"]) == (body["detail"], status), body
    assert re.fullmatch(r"[a-z_]+", body["name"]), body
    if field is not None:
        wanted = (field,) if isinstance(field, str) else field
        fields = [error["field"] for error in body.get("errors", [])]
        assert any(f in wanted for f in fields), f"expected a field in {wanted}: {body}"
        for error in body["errors"]:
            assert isinstance(error["message"], str) and error["message"], body
    return body


async def assert_nothing_accepted(postline: PostlineUnderTest) -> None:
    response = await postline.client.get("/v1/emails", headers=postline.auth())
    assert response.status_code == 200, response.text
    assert response.json()["data"] == []
    # Files of bodies written and removed again are kept as spares, empty (spool.spares).
    left = [p for p in Path(postline.settings.spool_path).rglob("*") if p.is_file()]
    assert [p for p in left if p.parent.name != SPARE_DIR or p.stat().st_size] == []


async def post_raw(
    postline: PostlineUnderTest,
    content: bytes,
    headers: dict[str, str] | None = None,
    path: str = "/v1/emails",
) -> httpx.Response:
    return await postline.client.post(
        path, content=content, headers={**postline.auth(), **(headers or {})}
    )


async def post_json(
    postline: PostlineUnderTest,
    body: Any,
    key: str | None = None,
    path: str = "/v1/emails",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """POST ``body`` as JSON; ``json.dumps`` escapes lone surrogates, so they reach the app."""
    return await postline.client.post(
        path,
        content=json.dumps(body).encode(),
        headers={**postline.auth(key), **JSON_HEADERS, **(headers or {})},
    )


async def new_key(postline: PostlineUnderTest, domain: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"name": f"key for {domain or 'admin'}"}
    if domain is not None:
        body["domain"] = domain
    response = await postline.client.post("/v1/api-keys", json=body, headers=postline.auth())
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


# --- 400 ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [b'{"to": ', b"{bad json}", b"\xff\xfe{}", b'{"from": "a@example.test",}'],
    ids=["truncated", "not-json", "not-utf8", "trailing-comma"],
)
async def test_malformed_json_is_400(postline_factory: Factory, content: bytes) -> None:
    postline = await postline_factory(engine=False)
    for path in ("/v1/emails", "/v1/emails/batch"):
        response = await post_raw(postline, content, JSON_HEADERS, path)
        assert_problem(response, 400)
    await assert_nothing_accepted(postline)


async def test_empty_body_is_400(postline_factory: Factory) -> None:
    postline = await postline_factory(engine=False)
    assert_problem(await post_raw(postline, b"", JSON_HEADERS), 400)
    assert_problem(await post_raw(postline, b""), 400)
    assert_problem(await post_raw(postline, b"", JSON_HEADERS, "/v1/emails/batch"), 400)
    await assert_nothing_accepted(postline)


# --- 401 ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, "Basic dXNlcjpwYXNz", "Token pl_abc", "Bearer", "Bearer    ", "Bearer pl_unknown"],
    ids=["missing", "basic", "token-scheme", "bearer-no-key", "bearer-blank", "unknown-key"],
)
async def test_missing_or_bad_key_is_401(
    postline_factory: Factory, authorization: str | None
) -> None:
    postline = await postline_factory(engine=False)
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, path in [
        ("POST", "/v1/emails"),
        ("GET", "/v1/emails"),
        ("GET", "/v1/domains"),
        ("GET", "/v1/api-keys"),
    ]:
        response = await postline.client.request(method, path, json=valid_email(), headers=headers)
        assert_problem(response, 401)
        # RFC 6750 section 3: the challenge names the scheme; a refused key says why.
        challenge = response.headers.get("www-authenticate", "")
        assert challenge.startswith("Bearer realm="), challenge
        assert ('error="invalid_token"' in challenge) == (authorization == "Bearer pl_unknown")
    await assert_nothing_accepted(postline)


async def test_revoked_key_is_refused_on_the_very_next_request(
    postline_factory: Factory,
) -> None:
    postline = await postline_factory(engine=False)
    created = await new_key(postline)
    assert (
        await postline.client.get("/v1/emails", headers=postline.auth(created["key"]))
    ).status_code == 200
    revoked = await postline.client.delete(f"/v1/api-keys/{created['id']}", headers=postline.auth())
    assert revoked.status_code == 204, revoked.text
    assert_problem(
        await postline.client.get("/v1/emails", headers=postline.auth(created["key"])), 401
    )
    assert_problem(await post_json(postline, valid_email(), key=created["key"]), 401)
    await assert_nothing_accepted(postline)
    # Revoking it again: it is no longer an active key.
    again = await postline.client.delete(f"/v1/api-keys/{created['id']}", headers=postline.auth())
    assert_problem(again, 404)


# --- 403 ----------------------------------------------------------------------------------


async def test_scoped_key_cannot_send_from_another_domain(postline_factory: Factory) -> None:
    postline = await postline_factory(engine=False, domains=("example.test", "second.test"))
    scoped = (await new_key(postline, "example.test"))["key"]
    response = await post_json(postline, valid_email(**{"from": "x@second.test"}), key=scoped)
    assert_problem(response, 403, "from")
    # In a batch the one foreign item refuses the whole batch, naming its index.
    batch = [valid_email(), valid_email(**{"from": "Other <x@second.test>"})]
    response = await post_json(postline, batch, key=scoped, path="/v1/emails/batch")
    assert_problem(response, 403, "[1].from")
    await assert_nothing_accepted(postline)


async def test_scoped_key_cannot_manage_domains_or_keys(postline_factory: Factory) -> None:
    postline = await postline_factory(engine=False)
    scoped = await new_key(postline, "example.test")
    headers = postline.auth(scoped["key"])
    domains = (await postline.client.get("/v1/domains", headers=postline.auth())).json()["data"]
    domain_id = domains[0]["id"]
    client = postline.client
    assert_problem(await client.post("/v1/domains", json={"name": "x.test"}, headers=headers), 403)
    assert_problem(await client.post("/v1/api-keys", json={"name": "n"}, headers=headers), 403)
    assert_problem(
        await client.post(
            "/v1/api-keys", json={"name": "n", "domain": "example.test"}, headers=headers
        ),
        403,
    )
    assert_problem(await client.get("/v1/api-keys", headers=headers), 403)
    assert_problem(await client.delete(f"/v1/api-keys/{scoped['id']}", headers=headers), 403)
    assert_problem(await client.delete(f"/v1/domains/{domain_id}", headers=headers), 403)
    # Nothing changed: no new domain, the scoped key still works.
    names = [
        d["name"] for d in (await client.get("/v1/domains", headers=postline.auth())).json()["data"]
    ]
    assert names == ["example.test"]
    assert (await client.get("/v1/emails", headers=headers)).status_code == 200


# --- 404 ----------------------------------------------------------------------------------


async def test_unknown_email_is_404(postline_factory: Factory) -> None:
    postline = await postline_factory(engine=False)
    for path in ("/v1/emails/em_01unknown", "/v1/emails/%00", "/v1/emails/" + "x" * 3000):
        assert_problem(await postline.client.get(path, headers=postline.auth()), 404)
    cancel = await postline.client.post("/v1/emails/em_01unknown/cancel", headers=postline.auth())
    assert_problem(cancel, 404)


async def test_email_of_another_domain_is_404_for_a_scoped_key(postline_factory: Factory) -> None:
    postline = await postline_factory(engine=False, domains=("example.test", "second.test"))
    scoped = (await new_key(postline, "example.test"))["key"]
    foreign = await postline.send(**{"from": "x@second.test", "to": "alice@dest.test"})
    # "unknown or not visible": the same answer as for an id that does not exist.
    get = await postline.client.get(f"/v1/emails/{foreign['id']}", headers=postline.auth(scoped))
    assert_problem(get, 404)
    cancel = await postline.client.post(
        f"/v1/emails/{foreign['id']}/cancel", headers=postline.auth(scoped)
    )
    assert_problem(cancel, 404)
    # The refused cancel changed nothing.
    assert (await postline.email(foreign["id"]))["status"] == "queued"


async def test_unknown_or_invisible_domain_is_404(postline_factory: Factory) -> None:
    postline = await postline_factory(engine=False, domains=("example.test", "second.test"))
    client, admin = postline.client, postline.auth()
    assert_problem(await client.get("/v1/domains/dom_unknown", headers=admin), 404)
    patch = await client.patch(
        "/v1/domains/dom_unknown", json={"bounce_notifications": False}, headers=admin
    )
    assert_problem(patch, 404)
    assert_problem(await client.delete("/v1/domains/dom_unknown", headers=admin), 404)
    domains = {
        d["name"]: d["id"] for d in (await client.get("/v1/domains", headers=admin)).json()["data"]
    }
    scoped = postline.auth((await new_key(postline, "example.test"))["key"])
    before = await client.get(f"/v1/domains/{domains['second.test']}", headers=admin)
    assert_problem(await client.get(f"/v1/domains/{domains['second.test']}", headers=scoped), 404)
    patch = await client.patch(
        f"/v1/domains/{domains['second.test']}",
        json={"bounce_notifications": False},
        headers=scoped,
    )
    assert_problem(patch, 404)
    second = await client.get(f"/v1/domains/{domains['second.test']}", headers=admin)
    assert second.json() == before.json()  # the scoped PATCH changed nothing


async def test_unknown_route_is_404(postline: PostlineUnderTest) -> None:
    for path in ("/v1/nothing-here", "/nothing", "/v1/emails/x/y/z"):
        assert_problem(await postline.client.get(path, headers=postline.auth()), 404)
    assert_problem(await postline.client.get("/v2/emails"), 404)


# --- 409 ----------------------------------------------------------------------------------


async def test_idempotency_key_reused_with_a_different_body_is_409(
    postline_factory: Factory,
) -> None:
    postline = await postline_factory(engine=False)
    headers = {"Idempotency-Key": "order-42"}
    first = await post_json(postline, valid_email(), headers=headers)
    assert first.status_code == 202, first.text
    changed = await post_json(postline, valid_email(subject="Changed"), headers=headers)
    assert_problem(changed, 409)
    # The same key on the batch endpoint is a different body too.
    batch = await post_json(postline, [valid_email()], path="/v1/emails/batch", headers=headers)
    assert_problem(batch, 409)
    listed = (await postline.client.get("/v1/emails", headers=postline.auth())).json()["data"]
    assert [e["id"] for e in listed] == [first.json()["id"]]


async def test_idempotency_key_still_running_is_409(postline_factory: Factory) -> None:
    postline = await postline_factory(engine=False)
    headers = {"Idempotency-Key": "in-flight"}
    first = await post_json(postline, valid_email(), headers=headers)
    assert first.status_code == 202, first.text
    # Make the record look like a first request that has not finished yet.
    async with postline.services.db.write() as conn:
        await conn.execute(
            update(idempotency_keys)
            .where(idempotency_keys.c.key == "in-flight")
            .values(state="running", response=None)
        )
    assert_problem(await post_json(postline, valid_email(), headers=headers), 409)


async def test_cancel_with_nothing_cancellable_is_409(postline_factory: Factory) -> None:
    postline = await postline_factory(engine=False)
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    sent = await postline.send(to=["a@dest.test", "b@dest.test"], scheduled_at=later)
    path = f"/v1/emails/{sent['id']}/cancel"
    first = await postline.client.post(path, headers=postline.auth())
    assert first.status_code == 200, first.text
    body = assert_problem(await postline.client.post(path, headers=postline.auth()), 409)
    assert "cancel" in body["detail"]
    detail = await postline.email(sent["id"])
    assert [r["status"] for r in detail["recipients"]] == ["cancelled", "cancelled"]
    assert [e["type"] for e in detail["events"]].count("email.cancelled") == 2


async def test_post_existing_domain_is_409(postline_factory: Factory) -> None:
    postline = await postline_factory(engine=False)
    for name in ("example.test", "EXAMPLE.test", "example.test."):
        response = await postline.client.post(
            "/v1/domains", json={"name": name}, headers=postline.auth()
        )
        assert_problem(response, 409)
    domains = (await postline.client.get("/v1/domains", headers=postline.auth())).json()["data"]
    assert [d["name"] for d in domains] == ["example.test"]


# --- 413 ----------------------------------------------------------------------------------


async def test_message_larger_than_the_limit_is_413_and_nothing_is_accepted(
    postline_factory: Factory,
) -> None:
    postline = await postline_factory(engine=False, max_message_bytes=5000)
    big_text = valid_email(text="x" * 20_000)
    big_attachment = valid_email(
        attachments=[
            {
                "filename": "big.bin",
                "content": base64.b64encode(bytes(range(256)) * 40).decode(),
                "content_type": "application/octet-stream",
            }
        ]
    )
    assert_problem(await post_json(postline, big_text), 413)
    assert_problem(await post_json(postline, big_attachment), 413)
    # One oversized item refuses the whole batch.
    batch = [valid_email(), valid_email(), big_text]
    assert_problem(await post_json(postline, batch, path="/v1/emails/batch"), 413)
    # Also when it is built after the bodies of a first chunk were written to the spool
    # (accept.py ``_build``): those are removed again.
    late = COMPOSE_CHUNK + 1
    batch = [valid_email() for _ in range(late)] + [big_text]
    assert_problem(await post_json(postline, batch, path="/v1/emails/batch"), 413, f"[{late}]")
    # A request body far beyond the limit is refused before it is even parsed.
    huge = valid_email(text="y" * 2_000_000)
    assert_problem(await post_json(postline, huge), 413)
    # A 413 under an Idempotency-Key does not burn the key.
    keyed = {"Idempotency-Key": "big-then-small"}
    assert_problem(await post_json(postline, big_text, headers=keyed), 413)
    await assert_nothing_accepted(postline)
    small = await post_json(postline, valid_email(), headers=keyed)
    assert small.status_code == 202, small.text


# --- 422 ----------------------------------------------------------------------------------

CRLF_BCC = "hi\r\nBcc: evil@attacker.test"
INVALID_EMAILS: list[tuple[str, dict[str, Any], str | tuple[str, ...]]] = [
    ("to-invalid", valid_email(to=["not-an-address"]), "to[0]"),
    ("to-second-invalid", valid_email(to=["ok@dest.test", "bad@"]), "to[1]"),
    ("to-string-invalid", valid_email(to="two words@dest.test"), "to[0]"),
    ("to-missing", without("to"), "to"),
    ("to-empty", valid_email(to=[]), "to"),
    ("cc-invalid", valid_email(cc=["nope"]), "cc[0]"),
    ("bcc-invalid", valid_email(bcc="nope@"), "bcc[0]"),
    ("reply-to-invalid", valid_email(reply_to="nope"), "reply_to[0]"),
    ("subject-missing", without("subject"), "subject"),
    ("no-text-no-html", without("text"), ("text", "html")),
    ("text-and-html-null", valid_email(text=None, html=None), ("text", "html")),
    (
        "crlf-in-header-value",
        valid_email(headers={"X-Note": CRLF_BCC}),
        ("headers", "headers.X-Note"),
    ),
    ("lf-in-header-value", valid_email(headers={"X-Note": "a\nb"}), ("headers", "headers.X-Note")),
    ("crlf-in-header-name", valid_email(headers={"X-A\r\nBcc": "x"}), "headers"),
    ("crlf-in-subject", valid_email(subject=CRLF_BCC), "subject"),
    (
        "crlf-in-from",
        valid_email(**{"from": "sender@example.test\r\nBcc: evil@attacker.test"}),
        "from",
    ),
    ("bcc-header", valid_email(headers={"Bcc": "hidden@dest.test"}), ("headers", "headers.Bcc")),
    (
        "message-id-header",
        valid_email(headers={"Message-ID": "<x@y>"}),
        ("headers", "headers.Message-ID"),
    ),
    (
        "message-id-header-lower",
        valid_email(headers={"message-id": "<x@y>"}),
        ("headers", "headers.message-id"),
    ),
    ("from-header", valid_email(headers={"From": "ceo@example.test"}), ("headers", "headers.From")),
    (
        "attachment-not-base64",
        valid_email(attachments=[{"filename": "a.txt", "content": "not base64!"}]),
        "attachments[0].content",
    ),
    (
        "scheduled-too-far",
        valid_email(scheduled_at=(datetime.now(UTC) + timedelta(days=31)).isoformat()),
        "scheduled_at",
    ),
    ("scheduled-no-timezone", valid_email(scheduled_at="2030-01-01T10:00:00"), "scheduled_at"),
    ("scheduled-not-a-time", valid_email(scheduled_at="tomorrow"), "scheduled_at"),
    ("unknown-from-domain", valid_email(**{"from": "someone@unknown-domain.test"}), "from"),
    ("from-two-addresses", valid_email(**{"from": "a@example.test, b@example.test"}), "from"),
    ("unknown-field", valid_email(bccc=["typo@dest.test"]), "bccc"),
]


@pytest.mark.parametrize(
    ("body", "field"),
    [pytest.param(body, field, id=name) for name, body, field in INVALID_EMAILS],
)
async def test_invalid_field_is_422_naming_it(
    postline_factory: Factory, body: dict[str, Any], field: str | tuple[str, ...]
) -> None:
    postline = await postline_factory(engine=False)
    assert_problem(await post_json(postline, body), 422, field)
    await assert_nothing_accepted(postline)


async def test_idempotency_key_longer_than_256_is_422(postline_factory: Factory) -> None:
    postline = await postline_factory(engine=False)
    response = await post_json(postline, valid_email(), headers={"Idempotency-Key": "k" * 257})
    assert_problem(response, 422)
    await assert_nothing_accepted(postline)


@pytest.mark.parametrize(
    ("item", "field"),
    [
        pytest.param(valid_email(to="broken"), ("[3].to[0]", "[3].to"), id="bad-to"),
        pytest.param(without("to"), "[3].to", id="missing-to"),
        pytest.param(without("text"), ("[3].text", "[3].html"), id="no-body"),
        pytest.param(
            valid_email(**{"from": "x@unknown-domain.test"}), "[3].from", id="from-domain"
        ),
    ],
)
async def test_batch_with_one_invalid_item_names_its_index_and_accepts_nothing(
    postline_factory: Factory, item: dict[str, Any], field: str | tuple[str, ...]
) -> None:
    postline = await postline_factory(engine=False)
    batch = [valid_email(subject=f"#{i}") for i in range(5)]
    batch[3] = item
    response = await post_json(postline, batch, path="/v1/emails/batch")
    assert_problem(response, 422, field)
    await assert_nothing_accepted(postline)


async def test_batch_size_limits_are_422(postline_factory: Factory) -> None:
    postline = await postline_factory(engine=False)
    over = await post_json(postline, [valid_email()] * 501, path="/v1/emails/batch")
    assert_problem(over, 422)
    assert_problem(await post_json(postline, [], path="/v1/emails/batch"), 422)
    assert_problem(await post_json(postline, valid_email(), path="/v1/emails/batch"), 422)
    await assert_nothing_accepted(postline)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=-1", "limit"),
        ("limit=many", "limit"),
        ("status=lost", "status"),
        ("since=yesterday", "since"),
        ("since=2024-01-01T00:00:00", "since"),
        ("until=2024-01-01", "until"),
        ("tag=no-colon", "tag"),
        ('tag=a"b:c', "tag"),
        ("from=bad@@example.test", "from"),
    ],
)
async def test_bad_list_query_is_422(postline: PostlineUnderTest, query: str, field: str) -> None:
    response = await postline.client.get(f"/v1/emails?{query}", headers=postline.auth())
    assert_problem(response, 422, field)


async def test_invalid_domain_and_key_bodies_are_422(postline: PostlineUnderTest) -> None:
    client, admin = postline.client, postline.auth()
    for name in ("not a domain", "nodots", "-bad-.test", ""):
        assert_problem(
            await client.post("/v1/domains", json={"name": name}, headers=admin), 422, "name"
        )
    assert_problem(await client.post("/v1/domains", json={}, headers=admin), 422, "name")
    unknown = {"name": "k", "domain": "unknown-domain.test"}
    assert_problem(await client.post("/v1/api-keys", json=unknown, headers=admin), 422, "domain")
    assert_problem(
        await client.post("/v1/api-keys", json={"name": " "}, headers=admin), 422, "name"
    )
    assert_problem(await client.post("/v1/api-keys", json={}, headers=admin), 422, "name")
    domain_id = (await client.get("/v1/domains", headers=admin)).json()["data"][0]["id"]
    patch = await client.patch(
        f"/v1/domains/{domain_id}", json={"bounce_notifications": "maybe"}, headers=admin
    )
    assert_problem(patch, 422, "bounce_notifications")


# --- never 500 ----------------------------------------------------------------------------

ODD_EMAILS: list[Any] = [
    valid_email(to=42),
    valid_email(to=[42]),
    valid_email(to=None),
    valid_email(to={"address": "a@dest.test"}),
    valid_email(to=[["a@dest.test"]]),
    valid_email(to=["a@dest.test"] * 1001),
    valid_email(to="a" * 100_000 + "@dest.test"),
    valid_email(to="\ud800@dest.test"),
    valid_email(to="a@localhost"),
    valid_email(to="a@[127.0.0.1]"),
    valid_email(headers=["X-A", "1"]),
    valid_email(headers="X-A: 1"),
    valid_email(headers={"X-A": 1}),
    valid_email(headers={"X-A": None}),
    valid_email(headers={"": "x"}),
    valid_email(headers={"Ünïcode": "x"}),
    valid_email(headers={"X-A": "x" * 5000}),
    valid_email(headers={"X-A": "\ud800"}),
    valid_email(tags={"kind": 1}),
    valid_email(tags={"kind": None}),
    valid_email(tags={"kind": ["a"]}),
    valid_email(tags={"kind": {"nested": "x"}}),
    valid_email(tags=["kind:x"]),
    valid_email(tags={"kind": "\ud800"}),
    valid_email(tags={"kïnd": "x"}),
    valid_email(tags={"kind": "x" * 100_000}),
    valid_email(tags={f"t{i}": "x" for i in range(50)}),
    valid_email(attachments={"filename": "a.txt", "content": "QQ=="}),
    valid_email(attachments="QQ=="),
    valid_email(attachments=[None]),
    valid_email(attachments=[{"filename": "a.txt"}]),
    valid_email(attachments=[{"filename": "\ud800", "content": "QQ=="}]),
    valid_email(attachments=[{"filename": "a.txt", "content": "QQ==", "content_type": "bad"}]),
    valid_email(attachments=[{"filename": "a.txt", "content": "ÿÿÿÿ"}]),
    valid_email(subject=None),
    valid_email(subject=12),
    valid_email(subject="s" * 1_000_000),
    valid_email(subject="\ud800"),
    valid_email(text=12),
    valid_email(text=["x"]),
    valid_email(text="\ud800"),
    valid_email(html="<p>\udfff</p>", text=None),
    valid_email(**{"from": 12}),
    valid_email(**{"from": ["sender@example.test"]}),
    valid_email(**{"from": "x" * 1_000_000}),
    valid_email(**{"from": "\ud800 <sender@example.test>"}),
    valid_email(**{"from": "Ünïcödé <sender@ünknown.test>"}),
    valid_email(scheduled_at=12e20),
    valid_email(scheduled_at=True),
    valid_email(scheduled_at="2030-13-45T99:99:99Z"),
    valid_email(scheduled_at="9999-12-31T23:59:59+14:00"),
    valid_email(cc=12, bcc={"x": 1}),
    None,
    [],
    "just a string",
    12,
    {"": ""},
]
ODD_BATCHES: list[Any] = [
    [None],
    [12],
    ["x"],
    [[]],
    {"data": [valid_email()]},
    [valid_email(to=12)],
]
ODD_QUERIES = [
    "limit=1e3",
    "limit=99999999999999999999999",
    "cursor=%00",
    "cursor=" + "z" * 5000,
    "recipient=%00",
    "recipient=%ff%fe",
    "domain=%00",
    "domain=" + "d" * 5000,
    "tag=%ff:%00",
    "tag=$.x:y",
    "since=9999-12-31T23:59:59Z",
    "since=0001-01-01T00:00:00-14:00",
    "until=2024-02-30T00:00:00Z",
    "message_id=" + "m" * 5000,
    "from=%00",
    "from=\u00e9@\u00e9.test",
    "status=",
]


async def test_odd_inputs_never_answer_500(postline_factory: Factory) -> None:
    postline = await postline_factory(engine=False)
    for body in ODD_EMAILS:
        response = await post_json(postline, body)
        assert 400 <= response.status_code < 500, (
            body if len(repr(body)) < 300 else "",
            response.text,
        )
        assert_problem(response, response.status_code)
    for body in ODD_BATCHES:
        response = await post_json(postline, body, path="/v1/emails/batch")
        assert 400 <= response.status_code < 500, (body, response.text)
        assert_problem(response, response.status_code)
    for query in ODD_QUERIES:
        response = await postline.client.get(f"/v1/emails?{query}", headers=postline.auth())
        # A filter that matches nothing is a fine answer; a 5xx is not.
        if response.status_code == 200:
            assert response.json() == {
                "object": "list",
                "data": [],
                "has_more": False,
                "next_cursor": None,
            }
        else:
            assert 400 <= response.status_code < 500, (query, response.text)
            assert_problem(response, response.status_code)
    await assert_nothing_accepted(postline)


async def test_a_body_that_is_not_json_is_a_400(postline: PostlineUnderTest) -> None:
    response = await postline.client.post(
        "/v1/emails",
        content=b"from=a@example.test&to=b@dest.test",
        headers={**postline.auth(), "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "application/json" in response.json()["detail"]


# -- Resend's members and content negotiation -------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "media_type"),
    [
        (None, "application/json"),
        ("application/json", "application/json"),
        ("*/*", "application/json"),
        ("application/*", "application/json"),
        ("application/problem+json", PROBLEM_JSON),
        ("application/json, application/problem+json;q=0.9", PROBLEM_JSON),
        ("Application/Problem+JSON; charset=utf-8", PROBLEM_JSON),
        ("application/problem+json;q=0", "application/json"),
    ],
)
async def test_a_problem_is_plain_json_unless_problem_json_is_asked_for(
    postline_factory: Factory, accept: str | None, media_type: str
) -> None:
    postline = await postline_factory(engine=False)
    headers = {**postline.auth(), "Accept": accept} if accept is not None else postline.auth()
    if accept is None:
        del postline.client.headers["Accept"]  # the harness asks for problem+json
    response = await postline.client.post("/v1/emails", json=without("subject"), headers=headers)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == media_type
    body = response.json()
    assert (body["name"], body["statusCode"], body["message"]) == (
        "validation_error",
        422,
        body["detail"],
    )
    assert body["errors"][0]["field"] == "subject"


async def test_the_body_guards_problems_are_negotiated_too(postline_factory: Factory) -> None:
    """Answered before the application runs (no key, a body too large)."""
    postline = await postline_factory(engine=False, max_request_bytes=1024)
    plain = {"Accept": "application/json"}
    no_key = await postline.client.post("/v1/emails", json=valid_email(), headers=plain)
    assert no_key.status_code == 401
    assert no_key.headers["content-type"] == "application/json"
    assert no_key.json()["name"] == "missing_api_key"
    large = await postline.client.post(
        "/v1/emails",
        json=valid_email(text="x" * 4096),
        headers={**postline.auth(), **plain},
    )
    assert large.status_code == 413
    assert large.headers["content-type"] == "application/json"
    assert large.json()["statusCode"] == 413


@pytest.mark.parametrize(
    ("status", "name", "request_"),
    [
        (401, "missing_api_key", ("GET", "/v1/emails", {})),
        (401, "invalid_api_key", ("GET", "/v1/emails", {"Authorization": "Bearer pl_nope"})),
        (404, "not_found", ("GET", "/v1/emails/em_nothing", None)),
        (405, "method_not_allowed", ("PUT", "/v1/emails", None)),
    ],
)
async def test_each_problem_has_resends_name(
    postline_factory: Factory, status: int, name: str, request_: tuple[str, str, Any]
) -> None:
    postline = await postline_factory(engine=False)
    method, path, headers = request_
    response = await postline.client.request(
        method, path, headers=postline.auth() if headers is None else headers
    )
    body = assert_problem(response, status)
    assert body["name"] == name


async def test_a_scoped_key_sending_from_another_domain_is_invalid_from_address(
    postline_factory: Factory,
) -> None:
    postline = await postline_factory(engine=False, domains=("example.test", "other.test"))
    created = await postline.client.post(
        "/v1/api-keys", json={"name": "shop", "domain": "example.test"}, headers=postline.auth()
    )
    scoped = created.json()["key"]
    response = await postline.client.post(
        "/v1/emails",
        json=valid_email(**{"from": "sender@other.test"}),
        headers=postline.auth(scoped),
    )
    body = assert_problem(response, 403, "from")
    assert body["name"] == "invalid_from_address"
    admin_only = await postline.client.get("/v1/api-keys", headers=postline.auth(scoped))
    assert assert_problem(admin_only, 403)["name"] == "restricted_api_key"


async def test_idempotency_problems_have_resends_names(postline_factory: Factory) -> None:
    postline = await postline_factory(engine=False)
    headers = {**postline.auth(), "Idempotency-Key": "k"}
    first = await postline.client.post("/v1/emails", json=valid_email(), headers=headers)
    assert first.status_code == 202, first.text
    other = await postline.client.post(
        "/v1/emails", json=valid_email(subject="Other"), headers=headers
    )
    assert assert_problem(other, 409)["name"] == "invalid_idempotent_request"
    empty = await postline.client.post(
        "/v1/emails", json=valid_email(), headers={**postline.auth(), "Idempotency-Key": " "}
    )
    assert assert_problem(empty, 400)["name"] == "invalid_idempotency_key"
