"""Domain scoping over every route of the API: a key scoped to one domain never reads,
sends or manages another domain's data.

The matrix is checked against the routes the app really serves, so an endpoint
added later without a row here fails ``test_every_route_is_in_the_matrix``
until someone decides how it is scoped. Each row says who may call the route
(``public``, ``admin``, the resource's ``owner``) and how to call it on the
resources of domain B; key A (scoped to ``a.test``) then gets a 403 or 404
carrying none of B's data, and B's own key (or the admin key) gets through,
which proves the refusal is the scoping and not a malformed call.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import pytest_asyncio
from fastapi import FastAPI
from fastapi.routing import APIRoute
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook

from postline.api.app import create_api
from postline.dashboard import manage as dashboard_manage
from postline.dashboard import pages as dashboard_pages
from postline.inbound.routed import RoutedMail
from postline.store import inbound_routes as route_store
from postline.store import schema
from tests.harness.postline import Factory, PostlineUnderTest
from tests.harness.receiver import Hook, WebhookReceiver

Kind = Literal["public", "admin", "owner", "list", "send"]
Headers = dict[str, str]
PROBLEM_JSON = "application/problem+json"


@dataclass(frozen=True)
class Case:
    """How one route is scoped, and how to call it on domain B's resources.

    ``kind``: ``public`` needs no key; ``admin`` needs an unscoped key (key A gets 403);
    ``owner`` acts on one of B's resources (key A gets 403 or 404); ``list`` answers key A
    with A's data only (or 403/404 for a filter naming B); ``send`` sends from B's domain
    (key A gets 403). ``queries`` are the query strings tried; ``body`` builds the JSON body.
    ``echoes``: keys of ``World.b`` the call itself sends (a path's address), which the
    answer may repeat.
    """

    kind: Kind
    body: Callable[[World], Any] | None = None
    queries: Callable[[World], list[dict[str, str]]] = lambda _: [{}]
    own: str | None = None
    """For ``list``: the id (key of ``World.a``) key A must see in its unfiltered answer."""
    status: int = 200
    """For ``public``: the answer expected (a tracking route with a forged token: 404)."""
    echoes: tuple[str, ...] = ()


@dataclass
class World:
    pl: PostlineUnderTest
    key_a: str
    key_b: str
    revoked: str
    a: dict[str, str] = field(default_factory=dict)
    b: dict[str, str] = field(default_factory=dict)
    secrets_b: list[str] = field(default_factory=list)
    """B's data that must never appear in any answer to key A (nor to no key)."""

    def auth(self, key: str) -> Headers:
        return {"Authorization": f"Bearer {key}"}


def _email(sender: str, to: str, subject: str = "Hello") -> dict[str, Any]:
    return {"from": sender, "to": [to], "subject": subject, "text": "hi"}


def _hook(url: str, domain: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"url": url, "events": ["*"]}
    if domain is not None:
        body["domain"] = domain
    return body


MATRIX: dict[tuple[str, str], Case] = {
    # --- no key needed
    ("GET", "/healthz"): Case("public"),
    ("GET", "/readyz"): Case("public"),
    ("GET", "/metrics"): Case("public"),
    ("GET", "/openapi.json"): Case("public"),
    ("GET", "/docs"): Case("public"),
    ("GET", "/redoc"): Case("public"),
    ("GET", "/v1"): Case("public"),
    # Tracking: the signed token is the authority; a forged one is a 404.
    ("GET", "/t/o/{token}"): Case("public", status=404),
    ("GET", "/t/c/{token}"): Case("public", status=404),
    ("GET", "/t/u/{token}"): Case("public", status=404),
    ("POST", "/t/u/{token}"): Case("public", status=404),
    # A proxy's on-demand TLS question: 404 for a name that is no tracking host.
    ("GET", "/t/tls"): Case("public", status=404, queries=lambda w: [{"domain": "t.b.test"}]),
    # --- emails
    ("POST", "/v1/emails"): Case(
        "send", body=lambda w: _email("Intruder <intruder@b.test>", "victim@dest.test")
    ),
    ("POST", "/v1/emails/batch"): Case(
        "send",
        body=lambda w: [
            _email("a@a.test", "x@dest.test"),
            _email("Intruder <intruder@b.test>", "victim@dest.test"),
        ],
    ),
    ("POST", "/v1/emails/raw"): Case(
        "send",
        body=lambda w: {
            "from": "bounce@b.test",
            "to": ["victim@dest.test"],
            "raw": base64.b64encode(
                b"From: Intruder <intruder@b.test>\r\nTo: victim@dest.test\r\n\r\nx\r\n"
            ).decode(),
        },
    ),
    ("GET", "/v1/emails"): Case(
        "list",
        own="email_id",
        queries=lambda w: [
            {},
            {"domain": "b.test"},
            {"recipient": w.b["recipient"]},
            {"from": w.b["from"]},
            {"message_id": w.b["message_id"]},
            {"cursor": "em_zzzzzzzzzzzzzzzzzzzzzzzzzz", "limit": "500"},
        ],
    ),
    ("GET", "/v1/emails/{email_id}"): Case("owner"),
    ("GET", "/v1/emails/{email_id}/content"): Case("owner"),
    ("POST", "/v1/emails/{email_id}/cancel"): Case("owner"),
    ("POST", "/v1/emails/{email_id}/retry"): Case("owner"),
    ("PATCH", "/v1/emails/{email_id}"): Case("owner", body=lambda w: {"scheduled_at": "in 1 hour"}),
    # --- domains and keys
    ("GET", "/v1/domains"): Case("list", own="domain_id"),
    ("POST", "/v1/domains"): Case("admin", body=lambda w: {"name": "new.test"}),
    ("GET", "/v1/domains/{domain_id}"): Case("owner"),
    ("PATCH", "/v1/domains/{domain_id}"): Case(
        "owner", body=lambda w: {"bounce_notifications": True}
    ),
    ("DELETE", "/v1/domains/{domain_id}"): Case("admin"),
    ("POST", "/v1/domains/{domain_id}/verify"): Case("owner"),
    ("GET", "/v1/api-keys"): Case("admin"),
    ("POST", "/v1/api-keys"): Case("admin", body=lambda w: {"name": "mine", "domain": "b.test"}),
    ("DELETE", "/v1/api-keys/{key_id}"): Case("admin"),
    # --- the event feed
    ("GET", "/v1/events"): Case(
        "list", own="email_id", queries=lambda w: [{}, {"type": "email.queued"}, {"limit": "1000"}]
    ),
    # --- inbound reports that could not be applied
    ("GET", "/v1/inbound/reports"): Case("admin"),
    # --- inbound routes and the mail they took
    ("GET", "/v1/inbound-routes"): Case("list", own="route_id"),
    ("POST", "/v1/inbound-routes"): Case("send", body=lambda w: {"match": "new@b.test"}),
    ("GET", "/v1/inbound-routes/{route_id}"): Case("owner"),
    ("DELETE", "/v1/inbound-routes/{route_id}"): Case("owner"),
    ("GET", "/v1/inbound"): Case(
        "list", own="inbound_id", queries=lambda w: [{}, {"domain": "b.test"}]
    ),
    ("GET", "/v1/inbound/{inbound_id}"): Case("owner"),
    ("GET", "/v1/inbound/{inbound_id}/raw"): Case("owner"),
    # --- suppressions
    ("GET", "/v1/suppressions"): Case(
        "list",
        own="suppression_id",
        queries=lambda w: [{}, {"domain": "b.test"}, {"address": w.b["suppressed"]}],
    ),
    ("POST", "/v1/suppressions"): Case(
        "send", body=lambda w: {"address": "someone@dest.test", "domain": "b.test"}
    ),
    ("GET", "/v1/suppressions/{suppression_id}"): Case("owner"),
    ("DELETE", "/v1/suppressions/{suppression_id}"): Case("owner"),
    # --- webhooks
    ("GET", "/v1/webhooks"): Case("list", own="webhook_id"),
    ("POST", "/v1/webhooks"): Case(
        "send", body=lambda w: _hook("http://127.0.0.1:9/intruder", "b.test")
    ),
    ("GET", "/v1/webhooks/{webhook_id}"): Case("owner"),
    ("PATCH", "/v1/webhooks/{webhook_id}"): Case(
        "owner", body=lambda w: {"url": "http://127.0.0.1:9/stolen", "enabled": True}
    ),
    ("DELETE", "/v1/webhooks/{webhook_id}"): Case("owner"),
    ("POST", "/v1/webhooks/{webhook_id}/rotate-secret"): Case("owner"),
    ("POST", "/v1/webhooks/{webhook_id}/test"): Case("owner"),
    ("GET", "/v1/webhooks/{webhook_id}/deliveries"): Case("owner"),
    ("POST", "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/replay"): Case("owner"),
    # --- statistics
    ("GET", "/v1/stats"): Case("send", queries=lambda w: [{"domain": "b.test"}]),
    # --- templates
    ("GET", "/v1/templates"): Case("list", own="template_id"),
    ("POST", "/v1/templates"): Case(
        "send", body=lambda w: {"name": "x", "subject": "s", "text": "t", "domain": "b.test"}
    ),
    ("GET", "/v1/templates/{template_id}"): Case("owner"),
    ("PUT", "/v1/templates/{template_id}"): Case(
        "owner", body=lambda w: {"subject": "stolen", "text": "x"}
    ),
    ("DELETE", "/v1/templates/{template_id}"): Case("owner"),
    ("GET", "/v1/templates/{template_id}/versions/{version}"): Case("owner"),
    ("POST", "/v1/templates/{template_id}/render"): Case("owner", body=lambda w: {"variables": {}}),
    # --- "why didn't they get it?"
    ("GET", "/v1/recipients/{address}"): Case("list", own="email_id", echoes=("address", "domain")),
    # --- operations: the queue is shared by every domain, so only an admin sees it
    ("GET", "/v1/destinations"): Case("admin"),
    ("GET", "/v1/destinations/{domain}"): Case("admin"),
    ("POST", "/v1/destinations/{domain}/breaker"): Case("admin", body=lambda w: {"state": "open"}),
}


def served_routes(app: FastAPI) -> set[tuple[str, str]]:
    """(method, path) of every route the app answers, HEAD aside, walking included routers."""
    found: set[tuple[str, str]] = set()

    def walk(routes: list[Any], prefix: str) -> None:
        for route in routes:
            inner = getattr(route, "original_router", None)
            if inner is not None:  # FastAPI >= 0.160 keeps included routers as branches
                walk(list(inner.routes), prefix + route.include_context.prefix)
            elif hasattr(route, "routes") and not hasattr(route, "methods"):
                walk(list(route.routes), prefix + getattr(route, "path", ""))
            else:
                for method in getattr(route, "methods", None) or ():
                    if method != "HEAD":
                        found.add((method, prefix + route.path))

    walk(list(app.router.routes), "")
    # The schema lists every documented operation: the walk must have found them all.
    for path, operations in app.openapi()["paths"].items():
        for method in operations:
            assert (method.upper(), path) in found, f"route walk missed {method} {path}"
    return found


def dashboard_routes() -> set[tuple[str, str]]:
    """The dashboard's pages: a signed-in session's, not an API key's; each calls the API
    route functions above as its key (tests/integration/test_dashboard_session.py)."""
    found = set()
    for router in (dashboard_pages.router, dashboard_manage.router):
        for route in router.routes:
            assert isinstance(route, APIRoute)
            found |= {(m, route.path) for m in route.methods or () if m != "HEAD"}
    return found


async def test_every_route_is_in_the_matrix(postline_factory: Factory) -> None:
    pl = await postline_factory(engine=False)
    served = served_routes(create_api(pl.services)) - dashboard_routes()
    missing = sorted(served - set(MATRIX))
    assert not missing, f"routes with no row in the security matrix: {missing}"
    stale = sorted(set(MATRIX) - served)
    assert not stale, f"matrix rows for routes that no longer exist: {stale}"


# --- the world: two domains, their keys and resources --------------------------------------


def _ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.content else None


async def _build(pl: PostlineUnderTest) -> World:
    client, admin = pl.client, pl.auth()
    keys = {}
    for name in ("a.test", "b.test"):
        body = {"name": f"key {name}", "domain": name}
        keys[name] = _ok(await client.post("/v1/api-keys", json=body, headers=admin), 201)
    revoked = _ok(
        await client.post("/v1/api-keys", json={"name": "old", "domain": "a.test"}, headers=admin),
        201,
    )
    _ok(await client.delete(f"/v1/api-keys/{revoked['id']}", headers=admin), 204)
    w = World(pl, keys["a.test"]["key"], keys["b.test"]["key"], revoked["key"])
    domains = (_ok(await client.get("/v1/domains", headers=admin)))["data"]
    ids = {d["name"]: d["id"] for d in domains}

    async def resources(side: dict[str, str], key: str, name: str, letter: str) -> None:
        headers = w.auth(key)
        recipient = f"{letter}-customer@{letter}-customer.test"
        sender = f"{letter}-sender@{name}"
        sent = _ok(
            await client.post(
                "/v1/emails",
                json=_email(sender, recipient, f"{letter} private subject"),
                headers=headers,
            ),
            202,
        )
        suppressed = f"{letter}-suppressed@{letter}-customer.test"
        suppression = _ok(
            await client.post("/v1/suppressions", json={"address": suppressed}, headers=headers),
            201,
        )
        hook_url = f"http://127.0.0.1:9/{letter}-private-hook"
        hook = _ok(await client.post("/v1/webhooks", json=_hook(hook_url), headers=headers), 201)
        test = _ok(await client.post(f"/v1/webhooks/{hook['id']}/test", headers=headers), 202)
        template = {"name": "t", "subject": f"{letter} private template", "text": "hi"}
        made = _ok(await client.post("/v1/templates", json=template, headers=headers), 201)
        routed = {"match": f"{letter}-support@{name}"}
        route = _ok(await client.post("/v1/inbound-routes", json=routed, headers=headers), 201)
        inbound_id = await _received(pl, route["id"], f"{letter} private inbound".encode())
        side.update(
            email_id=sent["id"],
            message_id=sent["message_id"],
            recipient=recipient,
            address=recipient,
            suppression_id=suppression["id"],
            suppressed=suppressed,
            webhook_id=hook["id"],
            webhook_url=hook_url,
            webhook_secret=hook["secret"],
            delivery_id=test["delivery_id"],
            template_id=made["id"],
            route_id=route["id"],
            inbound_id=inbound_id,
            version="1",
            domain_id=ids[name],
            key_id=keys[name]["id"],
            domain=f"{letter}-customer.test",
            token="forged.token",
        )
        side["from"] = sender

    await resources(w.a, w.key_a, "a.test", "a")
    await resources(w.b, w.key_b, "b.test", "b")
    # An admin's all-domain endpoint: no scoped key may see or touch it either.
    global_url = "http://127.0.0.1:9/global-private-hook"
    _ok(await client.post("/v1/webhooks", json=_hook(global_url), headers=admin), 201)
    domain_b = _ok(await client.get(f"/v1/domains/{ids['b.test']}", headers=admin))
    dkim = next(r["value"] for r in domain_b["dns_records"] if r["purpose"] == "dkim")
    w.secrets_b = [
        w.b["recipient"],
        w.b["message_id"],
        "b private subject",
        "b private template",
        "b private inbound",
        w.b["suppressed"],
        w.b["webhook_url"],
        w.b["webhook_secret"],
        w.key_b,
        w.b["domain"],  # where B sends: the destination domain of B's mail
        global_url,
        dkim[-40:],
    ]
    return w


async def _received(pl: PostlineUnderTest, route_id: str, subject: bytes) -> str:
    """Mail the route took, stored as the inbound listener stores it."""
    async with pl.services.db.read() as conn:
        route = await route_store.get_route(conn, route_id)
    assert route is not None
    routed = RoutedMail(pl.services.db, pl.services.inbound.wakeups)
    raw = b"From: x@far.test\r\nSubject: " + subject + b"\r\n\r\nhi\r\n"
    return await routed.take(route, "x@far.test", route.match, raw)


@pytest_asyncio.fixture
async def world(postline_factory: Factory) -> AsyncIterator[World]:
    pl = await postline_factory(
        engine=False, domains=("a.test", "b.test"), webhook_allow_private=True
    )
    yield await _build(pl)


def _path(template: str, values: dict[str, str]) -> str:
    return template.format(**values)


async def _call(
    w: World, method: str, template: str, case: Case, headers: Headers, values: dict[str, str]
) -> list[httpx.Response]:
    body = case.body(w) if case.body is not None else None
    answers = []
    for query in case.queries(w):
        answers.append(
            await w.pl.client.request(
                method, _path(template, values), params=query, json=body, headers=headers
            )
        )
    return answers


def _assert_problem(response: httpx.Response, allowed: set[int], what: str) -> None:
    assert response.status_code in allowed, f"{what}: {response.status_code} {response.text}"
    assert response.headers["content-type"].startswith(PROBLEM_JSON), what
    assert response.json()["status"] == response.status_code, what


def _assert_nothing_of_b(
    w: World, response: httpx.Response, what: str, echoes: tuple[str, ...] = ()
) -> None:
    text = response.text
    sent = {w.b[k] for k in echoes}
    leaked = [s for s in w.secrets_b if s in text and s not in sent]
    assert not leaked, f"{what} leaks B's data {leaked}: {text[:500]}"
    if response.status_code < 300:
        ids = [v for k, v in w.b.items() if k.endswith("_id") and v in text]
        assert not ids, f"{what} lists B's ids {ids}"


async def _snapshot(w: World) -> dict[str, Any]:
    """Every row a refused call could have changed (key usage times and the positions the
    event feed hands out to whoever reads it aside)."""
    tables = (
        schema.domains,
        schema.sent_emails,
        schema.email_recipients,
        schema.suppressions,
        schema.webhooks,
        schema.webhook_deliveries,
        schema.events,
        schema.api_keys,
        schema.breaker_commands,
        schema.queue_jobs,
        schema.templates,
        schema.template_versions,
        schema.inbound_routes,
        schema.inbound_messages,
    )
    state: dict[str, Any] = {}
    async with w.pl.services.db.read() as conn:
        for table in tables:
            rows = (await conn.execute(select(table))).mappings().all()
            bookkeeping = ("last_used_at", "feed_position")
            cleaned = [{k: v for k, v in r.items() if k not in bookkeeping} for r in rows]
            state[table.name] = sorted(json.dumps(r, default=str, sort_keys=True) for r in cleaned)
    return state


async def test_key_a_gets_nothing_of_domain_b_on_any_route(world: World) -> None:
    w = world
    before = await _snapshot(w)
    for (method, template), case in MATRIX.items():
        what = f"{method} {template}"
        if case.kind == "public":
            for response in await _call(w, method, template, case, {}, w.b):
                assert response.status_code == case.status, f"{what}: {response.status_code}"
                _assert_nothing_of_b(w, response, what)
            continue
        for label, headers in (
            ("no key", {}),
            ("bad key", w.auth("pl_" + "x" * 43)),
            ("revoked key", w.auth(w.revoked)),
            ("not bearer", {"Authorization": f"Basic {w.key_a}"}),
        ):
            for response in await _call(w, method, template, case, headers, w.b):
                _assert_problem(response, {401}, f"{what} with {label}")
                _assert_nothing_of_b(w, response, f"{what} with {label}")
        for response in await _call(w, method, template, case, w.auth(w.key_a), w.b):
            label = f"{what} with key A"
            _assert_nothing_of_b(w, response, label, case.echoes)
            if case.kind in ("admin", "send"):
                _assert_problem(response, {403}, label)
            elif case.kind == "owner" or response.status_code >= 400:  # or a filter naming B
                _assert_problem(response, {403, 404}, label)
        if case.kind == "list":
            mine = (await _call(w, method, template, case, w.auth(w.key_a), w.a))[0]
            assert mine.status_code == 200, mine.text
            assert case.own is not None and w.a[case.own] in mine.text, f"{what}: A sees own"
    # Nothing any refused call did is visible in the database.
    assert await _snapshot(w) == before


async def test_the_rightful_caller_gets_through_on_every_route(world: World) -> None:
    """The control for the test above: the same calls succeed for B's key (or the admin
    key), so a refusal there is the scoping and never a malformed request."""
    w = world
    # Destructive calls last, revoking B's own key very last.
    order = sorted(
        MATRIX.items(),
        key=lambda item: (item[0][0] == "DELETE", item[0][1].startswith("/v1/api-keys/")),
    )
    for (method, template), case in order:
        what = f"{method} {template}"
        if case.kind == "public":
            continue
        key = w.pl.admin_key if case.kind == "admin" else w.key_b
        if case.kind == "send" and template == "/v1/emails/batch":
            key = w.pl.admin_key  # the batch mixes both domains
        for response in await _call(w, method, template, case, w.auth(key), w.b):
            ok = response.status_code < 400 or response.status_code == 409
            assert ok, f"{what} by the rightful caller: {response.status_code} {response.text}"
            if case.kind == "list" and response.request.url.params.get("cursor") is None:
                assert any(v in response.text for k, v in w.b.items() if k.endswith("_id")), what


# --- events: an endpoint of domain A never receives domain B's events ----------------------


async def test_webhooks_of_a_domain_receive_only_its_events(postline_factory: Factory) -> None:
    pl = await postline_factory(domains=("a.test", "b.test"), webhook_allow_private=True)
    receivers = {name: WebhookReceiver() for name in ("a", "b", "all")}
    for receiver in receivers.values():
        await receiver.start()
    try:
        client, admin = pl.client, pl.auth()
        keys = {}
        secrets = {}
        for name in ("a", "b"):
            body = {"name": name, "domain": f"{name}.test"}
            keys[name] = (_ok(await client.post("/v1/api-keys", json=body, headers=admin), 201))[
                "key"
            ]
            hook = _ok(
                await client.post(
                    "/v1/webhooks",
                    json=_hook(receivers[name].url),
                    headers=pl.auth(keys[name]),
                ),
                201,
            )
            secrets[name] = hook["secret"]
        everything = _ok(
            await client.post("/v1/webhooks", json=_hook(receivers["all"].url), headers=admin), 201
        )
        sent = {
            name: await pl.send(
                keys[name], **{"from": f"{name}@{name}.test", "to": f"{name}-rcpt@dest.test"}
            )
            for name in ("a", "b")
        }

        def delivered(hooks: list[Hook]) -> bool:
            return {"a-rcpt@dest.test", "b-rcpt@dest.test"} <= {
                h.json["data"]["recipient"] for h in hooks if h.json["type"] == "email.delivered"
            }

        await receivers["all"].wait_until(delivered, what="both domains' deliveries")
        for name in ("a", "b"):

            def own_delivered(hooks: list[Hook], email_id: str = sent[name]["id"]) -> bool:
                return any(
                    h.json["type"] == "email.delivered" and h.json["data"]["email_id"] == email_id
                    for h in hooks
                )

            await receivers[name].wait_until(own_delivered, what=f"{name}'s delivery")
        await pl.stop_engine()
        for name, other in (("a", "b"), ("b", "a")):
            got = receivers[name].received
            assert {h.json["data"]["email_id"] for h in got} == {sent[name]["id"]}, name
            assert all(h.json["data"]["domain"] == f"{name}.test" for h in got)
            assert all(Webhook(secrets[name]).verify(h.body, h.headers) for h in got)
            assert not any(sent[other]["id"] in h.body.decode() for h in got)
        assert everything["domain"] is None
    finally:
        for receiver in receivers.values():
            await receiver.stop()
