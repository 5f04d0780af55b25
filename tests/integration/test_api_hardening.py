"""The low findings of issue 20's attack run, item 7, through the API.

Malformed webhook URLs are 422, not 500; a scoped key cannot tell whether a domain it
may not use exists; ``from`` in the API and in webhook payloads quotes its display
name; attachments cannot claim a structural MIME type; trace and authentication
headers cannot be set; webhook endpoints per domain are capped.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from sqlalchemy import select

from postline.store import schema
from tests.harness.fake_dns import FakeDNS
from tests.harness.polling import poll
from tests.harness.postline import Factory, PostlineUnderTest

PROBLEM_JSON = "application/problem+json"
TRICK = "Support <ceo@victim.test>"
QUOTED_FROM = '"Support <ceo@victim.test>" <sender@example.test>'


def hook(url: str = "http://127.0.0.1:9/hook", **fields: Any) -> dict[str, Any]:
    return {"url": url, "events": ["*"], **fields}


def email(**overrides: Any) -> dict[str, Any]:
    body = {"from": "Sender <sender@example.test>", "to": ["a@dest.test"], "subject": "Hi"}
    body["text"] = "Hello"
    return body | overrides


def problem(response: Any, status: int, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    body: dict[str, Any] = response.json()
    if field is not None:
        assert field in [e["field"] for e in body["errors"]], body
    return body


async def scoped_key(postline: PostlineUnderTest, domain: str) -> str:
    response = await postline.client.post(
        "/v1/api-keys", json={"name": domain, "domain": domain}, headers=postline.auth()
    )
    assert response.status_code == 201, response.text
    key: str = response.json()["key"]
    return key


# --- malformed webhook URLs ----------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://[::1/hook",
        "http://[::1]x/hook",
        "http://[not-an-address]/hook",
        "http://" + "a" * 64 + ".example.test/hook",
        "http://" + ".".join(["abcdefghij"] * 24) + ".test/",  # 275 characters
        "http://a..b.test/hook",
        "http://127.0.0.1:99999/hook",
        "http://127.0.0.1:port/hook",
        "http:///hook",
    ],
)
async def test_malformed_webhook_urls_are_422(postline_factory: Factory, url: str) -> None:
    postline = await postline_factory(engine=False, webhook_allow_private=True)
    created = await postline.client.post("/v1/webhooks", json=hook(url), headers=postline.auth())
    problem(created, 422, "url")
    good = await postline.client.post("/v1/webhooks", json=hook(), headers=postline.auth())
    assert good.status_code == 201, good.text
    patched = await postline.client.patch(
        f"/v1/webhooks/{good.json()['id']}", json={"url": url}, headers=postline.auth()
    )
    problem(patched, 422, "url")


async def test_well_formed_webhook_urls_still_pass(
    postline_factory: Factory, fake_dns: FakeDNS
) -> None:
    postline = await postline_factory(engine=False, webhook_allow_private=True)
    fake_dns.add_a("hooks.dest.test", "127.0.0.1")
    for url in ("http://[::1]:9/hook", "https://127.0.0.1/x?y=1", "http://hooks.dest.test./h"):
        created = await postline.client.post(
            "/v1/webhooks", json=hook(url), headers=postline.auth()
        )
        assert created.status_code == 201, (url, created.text)


# --- what a scoped key learns about other domains ------------------------------------------


async def test_a_scoped_key_gets_the_same_answer_for_existing_and_unknown_domains(
    postline_factory: Factory,
) -> None:
    postline = await postline_factory(
        engine=False, webhook_allow_private=True, domains=("a.test", "b.test")
    )
    key = await scoped_key(postline, "a.test")
    answers = []
    for domain in ("b.test", "nowhere.test"):
        webhook = await postline.client.post(
            "/v1/webhooks", json=hook(domain=domain), headers=postline.auth(key)
        )
        suppression = await postline.client.post(
            "/v1/suppressions",
            json={"address": "x@dest.test", "domain": domain},
            headers=postline.auth(key),
        )
        listed = await postline.client.get(
            "/v1/suppressions", params={"domain": domain}, headers=postline.auth(key)
        )
        answers.append(
            [
                (r.status_code, r.json()["errors"], r.json()["detail"].replace(domain, "D"))
                for r in (webhook, suppression, listed)
            ]
        )
    assert answers[0] == answers[1]
    assert [status for status, _, _ in answers[0]] == [403, 403, 403]
    # Its own domain still works, and an unscoped key is still told a name is unknown.
    own = await postline.client.post(
        "/v1/webhooks", json=hook(domain="A.test"), headers=postline.auth(key)
    )
    assert own.status_code == 201, own.text
    unknown = await postline.client.post(
        "/v1/webhooks", json=hook(domain="nowhere.test"), headers=postline.auth()
    )
    problem(unknown, 422, "domain")


# --- from, quoted ---------------------------------------------------------------------------


async def test_a_display_name_that_looks_like_an_address_is_quoted_in_from(
    postline_factory: Factory,
) -> None:
    postline = await postline_factory()
    sent = await postline.send(**{"from": f'"{TRICK}" <sender@example.test>', "to": "a@dest.test"})
    plain = await postline.send(to="b@dest.test")
    detail = await postline.email(sent["id"])
    assert detail["from"] == QUOTED_FROM
    assert (await postline.email(plain["id"]))["from"] == "Sender <sender@example.test>"
    listed = await postline.client.get("/v1/emails", headers=postline.auth())
    by_id = {item["id"]: item["from"] for item in listed.json()["data"]}
    assert by_id[sent["id"]] == QUOTED_FROM

    async def delivered_event() -> list[dict[str, Any]]:
        async with postline.services.db.read() as conn:
            rows = await conn.execute(
                select(schema.events.c.payload).where(schema.events.c.email_id == sent["id"])
            )
            payloads = [row.payload for row in rows]
        return [p for p in payloads if p["type"] == "email.delivered"]

    payloads = await poll(delivered_event, timeout=30, what="the email.delivered event")
    assert payloads[0]["data"]["from"] == QUOTED_FROM


# --- attachments and custom headers ---------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    ["multipart/mixed", "Multipart/Alternative", "message/rfc822", "message/partial"],
)
async def test_structural_attachment_types_are_422(
    postline_factory: Factory, content_type: str
) -> None:
    postline = await postline_factory(engine=False)
    attachment = {
        "filename": "x.eml",
        "content": base64.b64encode(b"Subject: inner\r\n\r\nhi").decode(),
        "content_type": content_type,
    }
    response = await postline.client.post(
        "/v1/emails", json=email(attachments=[attachment]), headers=postline.auth()
    )
    problem(response, 422, "attachments[0].content_type")
    attachment["content_type"] = "text/plain"
    ok = await postline.client.post(
        "/v1/emails", json=email(attachments=[attachment]), headers=postline.auth()
    )
    assert ok.status_code == 202, ok.text


@pytest.mark.parametrize(
    "name",
    [
        "Received",
        "Return-Path",
        "Authentication-Results",
        "ARC-Seal",
        "ARC-Authentication-Results",
        "DKIM-Signature",
        "Received-SPF",
        "X-Original-To",
        "X-Original-From",
        "Delivered-To",
        "X-Received",
        "DomainKey-Signature",
    ],
)
async def test_trace_and_authentication_headers_are_422_naming_the_header(
    postline_factory: Factory, name: str
) -> None:
    postline = await postline_factory(engine=False)
    response = await postline.client.post(
        "/v1/emails",
        json=email(headers={name: "mx.victim.test; spf=pass; dkim=pass"}),
        headers=postline.auth(),
    )
    body = problem(response, 422, "headers")
    assert name in body["detail"]
    ok = await postline.client.post(
        "/v1/emails", json=email(headers={"X-Campaign": "spring"}), headers=postline.auth()
    )
    assert ok.status_code == 202, ok.text


# --- webhook endpoints per domain -----------------------------------------------------------


async def test_webhook_endpoints_per_domain_are_capped(postline_factory: Factory) -> None:
    postline = await postline_factory(
        engine=False,
        webhook_allow_private=True,
        domains=("a.test", "b.test"),
        webhooks_per_domain=2,
    )
    key = await scoped_key(postline, "a.test")
    made = []
    for _ in range(2):
        created = await postline.client.post(
            "/v1/webhooks", json=hook(), headers=postline.auth(key)
        )
        assert created.status_code == 201, created.text
        made.append(created.json()["id"])
    third = await postline.client.post("/v1/webhooks", json=hook(), headers=postline.auth(key))
    assert "POSTLINE_WEBHOOKS_PER_DOMAIN" in problem(third, 409)["detail"]
    # The cap is per domain: another domain and the unscoped endpoints have their own.
    other = await postline.client.post(
        "/v1/webhooks", json=hook(domain="b.test"), headers=postline.auth()
    )
    assert other.status_code == 201, other.text
    for _ in range(2):
        unscoped = await postline.client.post("/v1/webhooks", json=hook(), headers=postline.auth())
        assert unscoped.status_code == 201, unscoped.text
    problem(await postline.client.post("/v1/webhooks", json=hook(), headers=postline.auth()), 409)
    # Deleting one makes room again.
    deleted = await postline.client.delete(f"/v1/webhooks/{made[0]}", headers=postline.auth(key))
    assert deleted.status_code == 204
    again = await postline.client.post("/v1/webhooks", json=hook(), headers=postline.auth(key))
    assert again.status_code == 201, again.text


async def test_the_default_cap_is_20(postline_factory: Factory) -> None:
    postline = await postline_factory(engine=False, webhook_allow_private=True)
    assert postline.settings.webhooks_per_domain == 20
    statuses = []
    for _ in range(21):
        created = await postline.client.post("/v1/webhooks", json=hook(), headers=postline.auth())
        statuses.append(created.status_code)
    assert statuses == [201] * 20 + [409]
