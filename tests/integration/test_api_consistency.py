"""Answers a client can rely on from one route to the next.

A cursor the list never gave out, an empty Idempotency-Key and a domain a scoped
key may not use are refused the same way everywhere, instead of silently
answering something else; a Message-ID matches with or without its brackets; and
every JSON answer is rendered in one (compact) style.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.harness.postline import Factory, PostlineUnderTest

PROBLEM_JSON = "application/problem+json"


def _problem(response: httpx.Response, status: int, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON), response.headers
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["detail"], body
    if field is not None:
        assert field in [error["field"] for error in body.get("errors", [])], body
    return body


async def _webhook(pl: PostlineUnderTest, key: str | None = None, **body: Any) -> httpx.Response:
    body = {"url": "http://127.0.0.1:9/hook", "events": ["*"], **body}
    return await pl.client.post("/v1/webhooks", json=body, headers=pl.auth(key))


async def _key(pl: PostlineUnderTest, domain: str) -> str:
    response = await pl.client.post(
        "/v1/api-keys", json={"name": domain, "domain": domain}, headers=pl.auth()
    )
    assert response.status_code == 201, response.text
    key: str = response.json()["key"]
    return key


# --- cursors ---------------------------------------------------------------------------------

BAD_CURSORS = [
    "garbage",
    "",
    "em_",
    "em_0123",
    "EM_01JC3W8Y9K2M4N6P8R0T2V4X6Z",
    "em_01JC3W8Y9K2M4N6P8R0T2V4X6Z",  # ids are lower case
    "em_01jc3w8y9k2m4n6p8r0t2v4x6z0",  # one character too many
    "em_01jc3w8y9k2m4n6p8r0t2v4x6u",  # u is no Crockford digit
    "sup_01jc3w8y9k2m4n6p8r0t2v4x6z",  # another list's id
]


@pytest.mark.parametrize("cursor", BAD_CURSORS, ids=repr)
async def test_a_cursor_the_send_log_never_gave_is_a_400(
    postline_factory: Factory, cursor: str
) -> None:
    pl = await postline_factory(engine=False)
    await pl.send(to="alice@dest.test")
    response = await pl.client.get("/v1/emails", params={"cursor": cursor}, headers=pl.auth())
    _problem(response, 400, "cursor")


async def test_every_paginated_list_refuses_a_bad_cursor_and_takes_its_own(
    postline_factory: Factory,
) -> None:
    pl = await postline_factory(engine=False, webhook_allow_private=True)
    await pl.send(to="alice@dest.test")
    hook = await _webhook(pl)
    assert hook.status_code == 201, hook.text
    deliveries = f"/v1/webhooks/{hook.json()['id']}/deliveries"
    own = {
        "/v1/emails": "em_01jc3w8y9k2m4n6p8r0t2v4x6z",
        "/v1/suppressions": "sup_01jc3w8y9k2m4n6p8r0t2v4x6z",
        deliveries: "whd_01jc3w8y9k2m4n6p8r0t2v4x6z",
        "/v1/inbound": "inm_01jc3w8y9k2m4n6p8r0t2v4x6z",
        "/v1/inbound/reports": "inb_01jc3w8y9k2m4n6p8r0t2v4x6z",
    }
    for path, cursor in own.items():
        good = await pl.client.get(path, params={"cursor": cursor}, headers=pl.auth())
        assert good.status_code == 200, (path, good.text)
        for bad in ("garbage", cursor.replace("_", "-"), cursor[:-1]):
            response = await pl.client.get(path, params={"cursor": bad}, headers=pl.auth())
            _problem(response, 400, "cursor")
    # Lists that answer in one page have no cursor at all: any one sent is a mistake.
    for path in ("/v1/domains", "/v1/api-keys", "/v1/webhooks", "/v1/destinations"):
        whole = await pl.client.get(path, headers=pl.auth())
        assert whole.status_code == 200 and whole.json()["next_cursor"] is None, whole.text
        response = await pl.client.get(path, params={"cursor": "garbage"}, headers=pl.auth())
        _problem(response, 400, "cursor")


# --- filters ---------------------------------------------------------------------------------


async def test_message_id_matches_with_or_without_brackets(postline_factory: Factory) -> None:
    pl = await postline_factory(engine=False)
    sent = await pl.send(to="alice@dest.test")
    await pl.send(to="bob@dest.test")
    message_id = sent["message_id"]
    assert message_id.startswith("<") and message_id.endswith(">")
    bare = message_id[1:-1]
    for query in (message_id, bare, f" {bare} ", f"<{bare}", f"{bare}>"):
        response = await pl.client.get(
            "/v1/emails", params={"message_id": query}, headers=pl.auth()
        )
        assert response.status_code == 200, response.text
        assert [item["id"] for item in response.json()["data"]] == [sent["id"]], query
    response = await pl.client.get(
        "/v1/emails", params={"message_id": bare + "x"}, headers=pl.auth()
    )
    assert response.json()["data"] == []


# --- Idempotency-Key -------------------------------------------------------------------------


async def test_an_empty_idempotency_key_is_a_400_and_sends_nothing(
    postline_factory: Factory,
) -> None:
    pl = await postline_factory(engine=False)
    body = {"from": "sender@example.test", "to": "a@dest.test", "subject": "s", "text": "t"}
    for path, payload in (("/v1/emails", body), ("/v1/emails/batch", [body])):
        response = await pl.client.post(
            path, json=payload, headers={**pl.auth(), "Idempotency-Key": ""}
        )
        _problem(response, 400, "Idempotency-Key")
    listed = await pl.client.get("/v1/emails", headers=pl.auth())
    assert listed.json()["data"] == []


# --- domain scope ----------------------------------------------------------------------------


async def test_a_scoped_key_gets_403_for_another_domain_on_every_route(
    postline_factory: Factory,
) -> None:
    """The same answer whether the other domain exists or not, wherever a domain is named."""
    pl = await postline_factory(
        engine=False, domains=("a.test", "b.test"), webhook_allow_private=True
    )
    key = await _key(pl, "a.test")
    for other in ("b.test", "missing.test"):
        email = {"from": f"x@{other}", "to": "v@dest.test", "subject": "s", "text": "t"}
        calls = [
            pl.client.get("/v1/emails", params={"domain": other}, headers=pl.auth(key)),
            pl.client.get("/v1/suppressions", params={"domain": other}, headers=pl.auth(key)),
            pl.client.post(
                "/v1/suppressions",
                json={"address": "v@dest.test", "domain": other},
                headers=pl.auth(key),
            ),
            _webhook(pl, domain=other, key=key),
            pl.client.post("/v1/emails", json=email, headers=pl.auth(key)),
            pl.client.post("/v1/emails/batch", json=[email], headers=pl.auth(key)),
        ]
        for call in calls:
            response = await call
            _problem(response, 403)
    # Its own domain, named, is fine on the same routes.
    for path in ("/v1/emails", "/v1/suppressions"):
        response = await pl.client.get(path, params={"domain": "a.test"}, headers=pl.auth(key))
        assert response.status_code == 200, response.text


# --- one JSON style --------------------------------------------------------------------------


def _compact(response: httpx.Response) -> None:
    """The body is exactly the compact rendering of what it holds."""
    expected = json.dumps(response.json(), separators=(",", ":"), ensure_ascii=False)
    assert response.text == expected, f"{response.request.url}: {response.text[:200]}"


async def test_every_answer_is_compact_json(postline_factory: Factory) -> None:
    pl = await postline_factory(engine=False)
    body = {"from": "Sender <s@example.test>", "to": "a@dest.test", "subject": "Ünïcode, too"}
    keyed = {**pl.auth(), "Idempotency-Key": "style-1"}
    answers = [
        await pl.client.post("/v1/emails", json={**body, "text": "t"}, headers=keyed),
        await pl.client.post("/v1/emails", json={**body, "text": "t"}, headers=keyed),  # replay
        await pl.client.post("/v1/emails/batch", json=[{**body, "text": "t"}], headers=pl.auth()),
        await pl.client.get("/v1/emails", headers=pl.auth()),
        await pl.client.get("/v1/domains", headers=pl.auth()),
        await pl.client.get("/v1/emails/em_missing", headers=pl.auth()),  # a problem
        await pl.client.get("/healthz"),
    ]
    assert answers[1].headers.get("Idempotent-Replayed") == "true"
    email_id = answers[0].json()["id"]
    answers.append(await pl.client.get(f"/v1/emails/{email_id}", headers=pl.auth()))
    for response in answers:
        assert response.headers["content-type"].split(";")[0] in (
            "application/json",
            PROBLEM_JSON,
        )
        _compact(response)
