"""Schemathesis against the app's own OpenAPI document: every operation, bad input included.

Each operation of ``/openapi.json`` gets a bounded number of generated requests,
valid and invalid (schemathesis' positive and negative modes, plus its coverage
phase of boundary values, missing headers and unsupported methods). Every
answer must be documented (status code, content type, body schema, headers),
an invalid request must be refused with a 4xx, and no request may cause a 5xx:
Postline runs on healthy storage here, so even 503 and 507 are failures.

The app runs in process on SQLite, in an event loop this module owns (the
requests are synchronous for Hypothesis; the loop keeps the database
connections in one place). In about half of the valid cases the ids in the
path are replaced by ids of real resources created first, and the body of a
send, suppression, webhook, domain or key by one that mostly passes validation
with fuzzed text inside, so the code behind the 404 and the 422 is fuzzed too.
A second, smaller run (fuzzing phase only) uses a key scoped to one domain.
Stateful runs (schemathesis links) are not used: the document has no links and
its success bodies are free-form, so there is nothing for them to follow.

Run on its own: ``.venv/bin/pytest tests/fuzz -q``; a failure prints a curl
command that reproduces it. ``derandomize=True`` makes every run generate the
same requests, so CI failures reproduce locally.
"""

from __future__ import annotations

import asyncio
import base64
import os
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis import Case as GenericCase
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    missing_required_header,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from postline.api.app import create_api
from postline.app import Services
from postline.config import Settings
from postline.domains import create_domain
from postline.keys import create_key
from postline.store.migrate import upgrade_async
from tests.harness import postline as harness
from tests.harness.fake_dns import FakeDNS

BASE = "http://postline"
Case = GenericCase[Any]
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
    missing_required_header,
    unsupported_method,
]
#: Fuzzing-phase examples per operation, valid and invalid together (the coverage phase
#: adds its own deterministic cases: about 5 to 190 per operation).
#: ``POSTLINE_FUZZ_EXAMPLES=500`` for a longer hunt on a workstation.
ADMIN_EXAMPLES = int(os.environ.get("POSTLINE_FUZZ_EXAMPLES", "25"))
SCOPED_EXAMPLES = max(5, ADMIN_EXAMPLES * 2 // 5)
FUZZ = settings(
    derandomize=True,
    deadline=None,
    database=None,
    # Each example is a request through the whole app: slow by Hypothesis' standards.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def fuzz_settings(data_dir: Path, nameserver: str) -> Settings:
    return harness.test_settings(
        data_dir,
        dns_nameservers=nameserver,
        # Loopback webhook URLs are fine: no dispatcher runs, nothing is ever sent.
        webhook_allow_private=True,
        # The fuzzer sends hundreds of requests a second with one key; the limiter has its
        # own tests, and a 429 here would only hide the handlers behind it.
        rate_limit_per_second=0,
    )


def openapi_document() -> dict[str, Any]:
    """The document the app serves; it depends on no data, so a throwaway app gives it."""
    with tempfile.TemporaryDirectory() as tmp:
        return create_api(Services.build(fuzz_settings(Path(tmp), "127.0.0.1:53"))).openapi()


DOCUMENT = openapi_document()
#: Every phase: schema examples, the coverage phase (boundary values, missing required
#: parts, undeclared methods) and fuzzing (valid and invalid requests).
schema = schemathesis.openapi.from_dict(DOCUMENT, config=SchemathesisConfig.from_dict({}))
#: The scoped key checks what a key may see and do, not the input space again: fuzzing only.
scoped_schema = schemathesis.openapi.from_dict(
    DOCUMENT, config=SchemathesisConfig.from_dict({"phases": {"coverage": {"enabled": False}}})
)

#: Ids of real resources by path parameter ("DELETE name" for the ones a DELETE may
#: destroy, so that deleting them does not starve the other operations). Filled by
#: the ``target`` fixture before any case is generated.
REAL_IDS: dict[str, list[str]] = {}

# Mostly printable text (so that some bodies pass validation), sometimes any text at all.
_TEXT = st.text(st.characters(exclude_categories=("Cc", "Cs")), max_size=40) | st.text(max_size=40)
_LOCAL = st.from_regex(r"[a-z0-9][a-z0-9._+-]{0,15}", fullmatch=True)
_RECIPIENT = st.emails() | st.sampled_from(["alice@dest.test", "Bob@Other.Test", "x@dest.test"])
_SENDER = (
    st.builds("{}@example.test".format, _LOCAL)
    | st.builds("{} <{}@example.test>".format, _TEXT, _LOCAL)
    | st.just("Sender <sender@example.test>")
)
_HEADER_NAME = st.from_regex(r"X-[A-Za-z0-9-]{1,20}", fullmatch=True) | st.sampled_from(
    ["List-Unsubscribe", "In-Reply-To", "Bcc", "Message-ID", "Resent-To", "X-Bad:Name"]
)
_ATTACHMENT = st.fixed_dictionaries(
    {
        "filename": st.text(min_size=1, max_size=20),
        "content": st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode()),
    },
    optional={"content_type": st.sampled_from(["application/pdf", "text/plain", "bad type"])},
)


def _future(days: float) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).isoformat()


#: An email body that passes the schema and mostly passes validation too, so that
#: accept, the spool and the message builder see fuzzed text (subject, headers, names).
EMAIL = st.fixed_dictionaries(
    {
        "from": _SENDER,
        "to": st.lists(_RECIPIENT, min_size=1, max_size=3) | _RECIPIENT,
        "subject": _TEXT,
        "text": _TEXT,
    },
    optional={
        "cc": st.lists(_RECIPIENT, max_size=2),
        "bcc": st.lists(_RECIPIENT, max_size=2),
        "reply_to": _RECIPIENT,
        "html": _TEXT,
        "headers": st.dictionaries(_HEADER_NAME, _TEXT, max_size=3),
        "tags": st.dictionaries(
            st.from_regex(r"[A-Za-z0-9_.-]{1,10}", fullmatch=True), _TEXT, max_size=3
        ),
        "attachments": st.lists(_ATTACHMENT, max_size=2),
        "scheduled_at": st.floats(min_value=0.01, max_value=40).map(_future),
    },
)
#: Valid-looking bodies per operation, drawn instead of the generated one half of the time.
BODIES: dict[str, st.SearchStrategy[Any]] = {
    "POST /v1/emails": EMAIL,
    "POST /v1/emails/batch": st.lists(EMAIL, min_size=1, max_size=3),
    "POST /v1/suppressions": st.fixed_dictionaries(
        {"address": _RECIPIENT},
        optional={
            "domain": st.sampled_from(["example.test", "spare.test", "EXAMPLE.test", "no.test"]),
            "reason": st.sampled_from(["manual", "complaint", "unsubscribe", "hard_bounce"]),
            "detail": _TEXT,
        },
    ),
    "POST /v1/webhooks": st.fixed_dictionaries(
        {
            "url": st.builds("http://127.0.0.1:9/{}".format, _TEXT)
            | st.sampled_from(["https://hooks.nowhere.test/x", "ftp://127.0.0.1/x"]),
            "events": st.lists(st.sampled_from(["*", "email.delivered", "email.nope"]), min_size=1),
        },
        optional={"domain": st.sampled_from(["example.test", "spare.test", "no.test"])},
    ),
    "POST /v1/domains": st.builds("{}.test".format, _LOCAL) | _TEXT,
    "POST /v1/api-keys": st.fixed_dictionaries(
        {"name": _TEXT}, optional={"domain": st.sampled_from(["example.test", "no.test"])}
    ),
}


def _real_ids(case: Case) -> st.SearchStrategy[dict[str, str]]:
    """For each path parameter with known real ids: keep the generated one, or take a real one."""
    chosen: dict[str, st.SearchStrategy[str]] = {}
    for name, generated in (case.path_parameters or {}).items():
        pool = REAL_IDS.get(f"{case.method.upper()} {name}") or REAL_IDS.get(name)
        if pool:
            chosen[name] = st.just(generated) | st.sampled_from(pool)
    return st.fixed_dictionaries(chosen)


def flatmap_case(context: Any, case: Case) -> st.SearchStrategy[Case]:
    """Aim generated requests at real resources, and send valid-looking bodies, half the time.

    Only for cases generated as valid: a request schemathesis built to be invalid stays
    invalid, so ``negative_data_rejection`` keeps its meaning.
    """
    meta = case.meta
    if meta is not None and meta.generation.mode.is_negative:
        return st.just(case)
    body = BODIES.get(case.operation.label)
    if body is not None and case.operation.label == "POST /v1/domains":
        body = body.map(lambda name: {"name": name})

    def aimed(choice: tuple[dict[str, str], Any]) -> Case:
        path, new_body = choice
        if path:
            case.path_parameters = {**case.path_parameters, **path}
        if new_body is not None:
            case.body = new_body
        return case

    new_bodies = st.none() if body is None else body | st.none()
    return st.tuples(_real_ids(case), new_bodies).map(aimed)


schema.hook(flatmap_case)
scoped_schema.hook(flatmap_case)


@dataclass
class Target:
    """Postline on SQLite in its own event loop, with real resources to aim at."""

    loop: asyncio.AbstractEventLoop
    client: httpx.AsyncClient
    services: Services
    admin_key: str
    scoped_key: str
    statuses: Counter[int] = field(default_factory=Counter)
    """Every answer's status code, printed at the end for docs/RELIABILITY.md."""

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    def send(self, case: Case, key: str) -> httpx.Response:
        """Serialise the case as schemathesis does (requests), send it through ASGI (httpx)."""
        kwargs = case.as_transport_kwargs(base_url=BASE, headers={"Authorization": f"Bearer {key}"})
        prepared = requests.Request(
            method=kwargs["method"],
            url=kwargs["url"],
            headers=kwargs.get("headers"),
            params=kwargs.get("params"),
            data=kwargs.get("data"),
            json=kwargs.get("json"),
            files=kwargs.get("files"),
            cookies=kwargs.get("cookies"),
        ).prepare()
        raw = prepared.body
        body = raw.encode() if isinstance(raw, str) else raw if isinstance(raw, bytes) else None
        headers = [
            (name.encode("latin-1"), value.encode("latin-1") if isinstance(value, str) else value)
            for name, value in prepared.headers.items()
        ]
        request = self.client.request(
            prepared.method or "GET", prepared.url or BASE, headers=headers, content=body
        )
        response: httpx.Response = self.run(request)
        self.statuses[response.status_code] += 1
        return response

    async def seed(self) -> dict[str, list[str]]:
        """Two of each resource (one to keep, one a DELETE may take); their ids."""
        auth = {"Authorization": f"Bearer {self.admin_key}"}

        async def post(path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
            response = await self.client.post(path, json=body, headers=auth)
            assert response.status_code in (201, 202), response.text
            created: dict[str, Any] = response.json()
            return created

        sent = {"from": "Sender <sender@example.test>", "subject": "Hi", "text": "Hi"}
        emails = [
            await post("/v1/emails", {**sent, "to": ["alice@dest.test", "bob@other.test"]}),
            # Scheduled: still cancellable (once).
            await post(
                "/v1/emails", {**sent, "to": "carol@dest.test", "scheduled_at": _future(20)}
            ),
            await post("/v1/emails", {**sent, "to": "dave@dest.test", "scheduled_at": _future(2)}),
        ]
        suppressions = [
            await post(
                "/v1/suppressions", {"address": f"{who}@dest.test", "domain": "example.test"}
            )
            for who in ("kept", "doomed")
        ]
        webhooks = [
            await post("/v1/webhooks", {"url": "http://127.0.0.1:9/all", "events": ["*"]}),
            # Scoped to example.test: the scoped key sees this one.
            await post(
                "/v1/webhooks",
                {"url": "http://127.0.0.1:9/ex", "events": ["*"], "domain": "example.test"},
            ),
            await post("/v1/webhooks", {"url": "http://127.0.0.1:9/doomed", "events": ["*"]}),
        ]
        deliveries = [await post(f"/v1/webhooks/{w['id']}/test") for w in webhooks[:2]]
        spare = await post("/v1/domains", {"name": "spare.test"})
        doomed = await post("/v1/domains", {"name": "doomed.test"})
        key = await post("/v1/api-keys", {"name": "to be revoked"})
        domains = await self.client.get("/v1/domains", headers=auth)
        return {
            "email_id": [e["id"] for e in emails],
            "domain_id": [d["id"] for d in domains.json()["data"] if d["name"] != "doomed.test"],
            "DELETE domain_id": [doomed["id"], spare["id"]],
            "DELETE key_id": [key["id"]],
            "suppression_id": [suppressions[0]["id"]],
            "DELETE suppression_id": [suppressions[1]["id"]],
            "webhook_id": [w["id"] for w in webhooks[:2]],
            "DELETE webhook_id": [webhooks[2]["id"]],
            "delivery_id": [d["delivery_id"] for d in deliveries],
            "domain": ["dest.test", "example.test", "DEST.test"],
        }


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    dns = FakeDNS()
    dns.start()
    settings_ = fuzz_settings(tmp_path_factory.mktemp("fuzz") / "data", dns.nameserver)
    settings_.data_dir.mkdir(parents=True, exist_ok=True)
    settings_.spool_path.mkdir(parents=True, exist_ok=True)
    loop = asyncio.new_event_loop()

    async def build() -> Target:
        await upgrade_async(settings_.database_url)
        services = Services.build(settings_)
        await create_domain(services.db, "example.test")
        admin = await create_key(services.db, "fuzz admin")
        scoped = await create_key(services.db, "fuzz scoped", "example.test")
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_api(services), raise_app_exceptions=False),
            base_url=BASE,
        )
        built = Target(loop, client, services, admin.key, scoped.key)
        REAL_IDS.update(await built.seed())
        return built

    built = loop.run_until_complete(build())
    try:
        yield built
    finally:
        tally = ", ".join(f"{code}: {n}" for code, n in sorted(built.statuses.items()))
        server_errors = sum(n for code, n in built.statuses.items() if code >= 500)
        print(f"\nfuzz: {built.statuses.total()} requests, {server_errors} answered 5xx ({tally})")
        loop.run_until_complete(built.client.aclose())
        loop.run_until_complete(built.services.close())
        loop.close()
        dns.stop()
        REAL_IDS.clear()


@schema.parametrize()
@settings(FUZZ, max_examples=ADMIN_EXAMPLES)
def test_every_operation_admin_key(case: Case, target: Target) -> None:
    case.validate_response(target.send(case, target.admin_key), checks=CHECKS)


@scoped_schema.parametrize()
@settings(FUZZ, max_examples=SCOPED_EXAMPLES)
def test_every_operation_scoped_key(case: Case, target: Target) -> None:
    case.validate_response(target.send(case, target.scoped_key), checks=CHECKS)
