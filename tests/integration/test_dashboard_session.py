"""The dashboard's door: sign-in with an API key, the session cookie, CSRF on every form,
sign-out, the server-side expiry, the rate limit on failed sign-ins, and a scoped key's
view. Over HTTP against the real app (in-process); tests/browser drives the pages."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import update

from postline.api.app import create_api
from postline.keys import create_key, revoke_by_prefix
from postline.store.schema import dashboard_sessions
from postline.store.types import utcnow
from tests.harness.postline import PostlineUnderTest

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(page: httpx.Response) -> str:
    found = CSRF.search(page.text)
    assert found, page.text[:2000]
    return found.group(1)


def browser(postline: PostlineUnderTest, base_url: str = "http://postline") -> httpx.AsyncClient:
    """A cookie-keeping client of the app, as a browser is: no API key header."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_api(postline.services)), base_url=base_url
    )


async def sign_in(client: httpx.AsyncClient, key: str) -> httpx.Response:
    form = await client.get("/")
    assert form.status_code == 200 and 'name="key"' in form.text, form.text[:500]
    return await client.post("/signin", data={"key": key, "csrf": csrf_of(form)})


async def log_in(client: httpx.AsyncClient, key: str) -> None:
    answer = await sign_in(client, key)
    assert answer.status_code == 303, answer.text


async def test_signing_in_with_an_api_key_sets_a_strict_http_only_session(
    postline: PostlineUnderTest,
) -> None:
    async with browser(postline) as client:
        form = await client.get("/")
        policy = form.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy
        answer = await client.post(
            "/signin", data={"key": postline.admin_key, "csrf": csrf_of(form)}
        )
        assert answer.status_code == 303 and answer.headers["location"] == "/"
        cookie = next(
            c for c in answer.headers.get_list("set-cookie") if c.startswith("postline_session=")
        )
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Max-Age=28800" in cookie
        assert "Secure" not in cookie  # plain HTTP: a Secure cookie would never come back
        page = await client.get("/emails")
        assert page.status_code == 200 and "Send log" in page.text


async def test_the_session_cookie_is_secure_over_tls(postline: PostlineUnderTest) -> None:
    async with browser(postline, "https://postline") as client:
        answer = await sign_in(client, postline.admin_key)
        cookie = next(
            c for c in answer.headers.get_list("set-cookie") if c.startswith("postline_session=")
        )
        assert "Secure" in cookie, cookie


async def test_a_wrong_key_or_a_form_without_its_token_does_not_sign_in(
    postline: PostlineUnderTest,
) -> None:
    async with browser(postline) as client:
        wrong = await sign_in(client, "pl_not_a_key")
        assert wrong.status_code == 401 and "not valid" in wrong.text
        forged = await client.post("/signin", data={"key": postline.admin_key})
        assert forged.status_code == 403
        assert (await client.get("/emails")).status_code == 303


async def test_every_form_needs_the_session_csrf_token(postline: PostlineUnderTest) -> None:
    async with browser(postline) as client:
        await log_in(client, postline.admin_key)
        token = csrf_of(await client.get("/suppressions"))
        body = {"address": "someone@dest.test", "domain": "example.test"}
        for forged in ({}, {"csrf": "x" * len(token)}):
            refused = await client.post("/suppressions", data=body | forged)
            assert refused.status_code == 403, refused.text
            signout = await client.post("/signout", data=forged)
            assert signout.status_code == 403
        listed = await postline.client.get("/v1/suppressions", headers=postline.auth())
        assert listed.json()["data"] == []
        added = await client.post("/suppressions", data=body | {"csrf": token})
        assert added.status_code == 303, added.text
        listed = await postline.client.get("/v1/suppressions", headers=postline.auth())
        assert [s["address"] for s in listed.json()["data"]] == ["someone@dest.test"]


async def test_sign_out_ends_the_session_on_the_server(postline: PostlineUnderTest) -> None:
    async with browser(postline) as client:
        await log_in(client, postline.admin_key)
        cookie = client.cookies["postline_session"]
        token = csrf_of(await client.get("/emails"))
        assert (await client.post("/signout", data={"csrf": token})).status_code == 303
    async with browser(postline) as replay:
        replay.cookies.set("postline_session", cookie)
        assert (await replay.get("/emails")).status_code == 303


async def test_an_expired_or_revoked_session_is_refused_by_the_server(
    postline: PostlineUnderTest,
) -> None:
    async with browser(postline) as client:
        await log_in(client, postline.admin_key)
        assert (await client.get("/emails")).status_code == 200
        async with postline.services.db.write() as conn:
            await conn.execute(
                update(dashboard_sessions).values(expires_at=utcnow() - timedelta(seconds=1))
            )
        assert (await client.get("/emails")).status_code == 303
    key = await create_key(postline.services.db, "soon revoked")
    async with browser(postline) as client:
        await log_in(client, key.key)
        assert (await client.get("/emails")).status_code == 200
        assert await revoke_by_prefix(postline.services.db, key.id) == key.id
        assert (await client.get("/emails")).status_code == 303
        polled = await client.get("/emails/rows", headers={"HX-Request": "true"})
        assert polled.headers.get("hx-redirect") == "/"


async def test_failed_sign_ins_count_against_the_rate_limit(
    postline_factory: Callable[..., Any],
) -> None:
    postline = await postline_factory(rate_limit_per_second=0.001, rate_limit_burst=3)
    async with browser(postline) as client:
        for _ in range(3):
            assert (await sign_in(client, "pl_guess")).status_code == 401
        refused = await sign_in(client, postline.admin_key)
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["retry-after"]) >= 1
        assert "postline_session" not in client.cookies


async def test_a_scoped_key_sees_its_own_domain_only(
    postline_factory: Callable[..., Any],
) -> None:
    postline = await postline_factory(domains=("example.test", "other.test"))
    mine = await postline.send(subject="Mine", to=["a@dest.test"])
    theirs = await postline.send(
        **{"from": "Other <x@other.test>"}, subject="Theirs", to=["b@dest.test"]
    )
    scoped = await create_key(postline.services.db, "scoped", "example.test")
    async with browser(postline) as client:
        await log_in(client, scoped.key)
        log = await client.get("/emails")
        assert mine["id"] in log.text and theirs["id"] not in log.text
        assert (await client.get(f"/emails/{theirs['id']}")).status_code == 404
        assert (await client.get(f"/emails/{mine['id']}")).status_code == 200
        assert (await client.get("/queue")).status_code == 403
        lookup = await client.get("/recipients", params={"address": "b@dest.test"})
        assert "Theirs" not in lookup.text


async def test_a_page_needs_the_scope_its_api_route_needs(postline: PostlineUnderTest) -> None:
    """The pages call the API's route functions directly, so they check the key's scopes
    themselves: a key that may only send sees no send log, no webhooks, no numbers."""
    sender = await create_key(postline.services.db, "sender", "example.test", scopes=["send"])
    async with browser(postline) as client:
        await log_in(client, sender.key)
        for path in ("/emails", "/emails/rows", "/suppressions", "/webhooks", "/domains"):
            page = await client.get(path)
            assert page.status_code == 403, (path, page.status_code)
            assert "lacks the" in page.text
        assert (await client.get("/overview/day")).status_code == 403
