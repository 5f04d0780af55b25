"""API key scopes and expiry: what a key may do, enforced on every route."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import update

from postline.api.app import create_api
from postline.store.schema import api_keys
from postline.store.types import utcnow
from tests.harness import FakeMX
from tests.harness.postline import Factory, PostlineUnderTest
from tests.integration.test_security_matrix import MATRIX, dashboard_routes, served_routes

EMAIL = {"from": "sender@example.test", "to": ["a@dest.test"], "subject": "Hi", "text": "x"}


async def _key(pl: PostlineUnderTest, **body: Any) -> dict[str, Any]:
    body.setdefault("name", "k")
    made = await pl.client.post("/v1/api-keys", json=body, headers=pl.auth())
    assert made.status_code == 201, made.text
    answer: dict[str, Any] = made.json()
    return answer


def _scope_of(method: str, path: str) -> str:
    """The scope docs/API.md says each route needs."""
    if path.startswith("/v1/emails"):
        return "read" if method == "GET" else "send"
    if path.startswith(("/v1/events", "/v1/recipients")) or (
        path.startswith("/v1/inbound")
        and path.split("/")[2] == "inbound"
        and path != "/v1/inbound/reports"
    ):
        return "read"  # mail inbound routes took: /v1/inbound, /{inbound_id}, /{inbound_id}/raw
    if path.startswith("/v1/stats"):
        return "stats"
    if path.startswith("/v1/domains"):
        return "read" if method == "GET" else "admin"
    for prefix, scope in (
        ("/v1/templates", "templates"),
        ("/v1/webhooks", "webhooks"),
        ("/v1/suppressions", "suppressions"),
    ):
        if path.startswith(prefix):
            return scope
    return "admin"  # api-keys, destinations, inbound reports, inbound routes


async def test_a_read_key_cannot_send_and_a_send_key_cannot_read(
    postline: PostlineUnderTest, fake_mx: FakeMX
) -> None:
    reader = await _key(postline, scopes=["read"])
    sender = await _key(postline, scopes=["send"], domain="example.test")
    assert (reader["scopes"], sender["scopes"]) == (["read"], ["send"])

    refused = await postline.client.post(
        "/v1/emails", json=EMAIL, headers=postline.auth(reader["key"])
    )
    assert refused.status_code == 403, refused.text
    assert "'send' scope" in refused.json()["detail"]
    assert refused.json()["name"] == "restricted_api_key"

    sent = await postline.send(key=sender["key"], to="a@dest.test")
    listed = await postline.client.get("/v1/emails", headers=postline.auth(sender["key"]))
    assert listed.status_code == 403 and "'read' scope" in listed.json()["detail"]
    read = await postline.client.get(
        f"/v1/emails/{sent['id']}", headers=postline.auth(reader["key"])
    )
    assert read.status_code == 200
    keys = await postline.client.get("/v1/api-keys", headers=postline.auth(reader["key"]))
    assert keys.status_code == 403


async def test_resends_sending_access_key_only_sends(postline: PostlineUnderTest) -> None:
    domains = await postline.client.get("/v1/domains", headers=postline.auth())
    domain_id = domains.json()["data"][0]["id"]
    key = await _key(postline, permission="sending_access", domain_id=domain_id)
    assert key["scopes"] == ["send"]
    listed = await postline.client.get("/v1/api-keys", headers=postline.auth())
    shown = next(k for k in listed.json()["data"] if k["id"] == key["id"])
    assert (shown["scopes"], shown["expires_at"]) == (["send"], None)
    admin_row = next(k for k in listed.json()["data"] if k["id"] != key["id"])
    assert admin_row["scopes"] == [
        "send",
        "read",
        "templates",
        "webhooks",
        "suppressions",
        "stats",
        "admin",
    ]


async def test_an_expired_key_is_refused_like_a_revoked_one(postline: PostlineUnderTest) -> None:
    soon = (utcnow() + timedelta(hours=1)).isoformat()
    key = await _key(postline, expires_at=soon)
    assert key["expires_at"] is not None
    ok = await postline.client.get("/v1/domains", headers=postline.auth(key["key"]))
    assert ok.status_code == 200
    async with postline.services.db.write() as conn:  # an hour passes
        await conn.execute(
            update(api_keys)
            .where(api_keys.c.id == key["id"])
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    expired = await postline.client.get("/v1/domains", headers=postline.auth(key["key"]))
    assert expired.status_code == 401, expired.text
    past = await postline.client.post(
        "/v1/api-keys",
        json={"name": "late", "expires_at": "2020-01-01T00:00:00Z"},
        headers=postline.auth(),
    )
    assert past.status_code == 422 and past.json()["errors"][0]["field"] == "expires_at"
    for bad in ([], ["sendd"]):
        refused = await postline.client.post(
            "/v1/api-keys", json={"name": "x", "scopes": bad}, headers=postline.auth()
        )
        assert refused.status_code == 422, refused.text


async def test_every_route_needs_its_scope(postline_factory: Factory) -> None:
    """A key with one other scope is refused by every route that needs a key, naming the
    scope docs/API.md gives; with that scope alone, the refusal is never the scope's."""
    pl = await postline_factory(engine=False)
    # The dashboard's pages are a session's: their scope checks are test_dashboard_session's.
    served = served_routes(create_api(pl.services)) - dashboard_routes()
    suppressions_only = (await _key(pl, scopes=["suppressions"]))["key"]
    stats_only = (await _key(pl, scopes=["stats"]))["key"]
    by_scope: dict[str, str] = {}
    checked = 0
    for method, path in sorted(served):
        if MATRIX[(method, path)].kind == "public":
            continue
        scope = _scope_of(method, path)
        other_only = stats_only if scope == "suppressions" else suppressions_only
        if scope not in by_scope:
            by_scope[scope] = (await _key(pl, scopes=[scope]))["key"]
        url = path.format_map(_Dummy())
        body: list[Any] | dict[str, Any] = [] if path.endswith("/batch") else {}
        refused = await pl.client.request(method, url, json=body, headers=pl.auth(other_only))
        assert refused.status_code == 403, (method, path, refused.text)
        assert f"'{scope}' scope" in refused.json()["detail"], (method, path, refused.text)
        allowed = await pl.client.request(method, url, json=body, headers=pl.auth(by_scope[scope]))
        assert "scope" not in allowed.text or allowed.status_code != 403, (method, path)
        checked += 1
    assert checked >= 40


class _Dummy(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "1" if key == "version" else f"x_{key}"
