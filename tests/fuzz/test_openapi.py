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
A third is stateful: schemathesis follows the document's links (answers.py) from a
created email or webhook to its uses (read, cancel, patch, rotate, test, replay,
delete), in random sequences of steps.

Each run draws new requests from a random seed, printed at the start (pytest's
header) and on failure; ``POSTLINE_FUZZ_SEED=<seed>`` replays it (tests/fuzz/replay.py).
Run on its own: ``.venv/bin/pytest tests/fuzz -q -s``; a failure also prints a curl
command that reproduces it.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, seed, settings
from hypothesis import strategies as st
from schemathesis import Case as GenericCase
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.core.transport import Response
from schemathesis.generation.stateful.state_machine import APIStateMachine
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
from tests.fuzz.replay import SEED, replay_hint
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
ADMIN_EXAMPLES = int(os.environ.get("POSTLINE_FUZZ_EXAMPLES", "40"))
SCOPED_EXAMPLES = max(5, ADMIN_EXAMPLES * 2 // 5)
#: Stateful scenarios (sequences of linked calls), and the most steps in one.
STATEFUL_EXAMPLES = max(5, ADMIN_EXAMPLES // 2)
STATEFUL_STEPS = 8
FUZZ = settings(
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
#: Every run draws from the printed seed. The harness authenticates every request itself
#: (``Target.send``), so schemathesis leaves the document's bearer scheme alone: a case
#: "without the Authorization header" would be sent with it, and then wrongly blamed for
#: being accepted. Calls without a key, or with a bad one, are test_security_matrix's.
BASE_CONFIG: dict[str, Any] = {"seed": SEED, "generation": {"with-security-parameters": False}}
#: Every phase: schema examples, the coverage phase (boundary values, missing required
#: parts, undeclared methods) and fuzzing (valid and invalid requests).
schema = schemathesis.openapi.from_dict(DOCUMENT, config=SchemathesisConfig.from_dict(BASE_CONFIG))
#: The scoped key checks what a key may see and do, not the input space again: fuzzing only.
scoped_schema = schemathesis.openapi.from_dict(
    DOCUMENT,
    config=SchemathesisConfig.from_dict(
        {**BASE_CONFIG, "phases": {"coverage": {"enabled": False}}}
    ),
)
#: The stateful runs, one per resource whose answers link onwards.
LINKED = {
    resource: schemathesis.openapi.from_dict(
        DOCUMENT, config=SchemathesisConfig.from_dict(BASE_CONFIG)
    ).include(path_regex=f"^/v1/{resource}")
    for resource in ("emails", "webhooks")
}

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
            # Mostly a URL that passes, so that the stateful runs have endpoints to follow.
            "url": st.builds("http://127.0.0.1:9/{}".format, _LOCAL)
            | st.builds("http://127.0.0.1:9/{}".format, _TEXT)
            | st.sampled_from(["https://hooks.nowhere.test/x", "ftp://127.0.0.1/x"]),
            "events": st.lists(
                st.sampled_from(["*", "email.delivered", "email.bounced"]), min_size=1
            )
            | st.lists(st.sampled_from(["*", "email.delivered", "email.nope"]), min_size=1),
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


#: Bodies that create the resource (for the stateful runs, so that most sequences have
#: something to follow): a reachable endpoint with known events, an email as above.
CREATES: dict[str, st.SearchStrategy[Any]] = {
    "POST /v1/emails": EMAIL,
    "POST /v1/webhooks": st.fixed_dictionaries(
        {
            "url": st.builds("http://127.0.0.1:9/{}".format, _LOCAL),
            "events": st.lists(
                st.sampled_from(["*", "email.delivered", "email.bounced"]), min_size=1
            ),
        }
    ),
}


def flatmap_linked(context: Any, case: Case) -> st.SearchStrategy[Case]:
    """As ``flatmap_case``, and a creating body half the time for the creating calls."""
    aimed = flatmap_case(context, case)
    creating = CREATES.get(case.operation.label)
    meta = case.meta
    if creating is None or (meta is not None and meta.generation.mode.is_negative):
        return aimed

    def created(body: Any) -> Case:
        case.body = body
        return case

    return creating.map(created) | aimed


schema.hook(flatmap_case)
scoped_schema.hook(flatmap_case)
for linked in LINKED.values():
    linked.hook("flatmap_case")(flatmap_linked)


@dataclass
class Target:
    """Postline on SQLite in its own event loop, with real resources to aim at."""

    loop: asyncio.AbstractEventLoop
    client: httpx.AsyncClient
    services: Services
    admin_key: str
    scoped_key: str
    nameserver: str
    statuses: Counter[int]
    """Every answer's status code, printed at the end for docs/RELIABILITY.md."""
    real_ids: dict[str, list[str]] = field(default_factory=dict)
    """The ids of the resources ``seed`` made (for ``REAL_IDS``)."""
    followed: Counter[str] = field(default_factory=Counter)
    """Stateful steps that used an id a step before them created, by operation and status."""

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    async def close(self) -> None:
        await self.client.aclose()
        await self.services.close()

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


async def open_target(
    data_dir: Path, nameserver: str, loop: asyncio.AbstractEventLoop, statuses: Counter[int]
) -> Target:
    """A new Postline on its own SQLite database in ``data_dir``, its resources seeded."""
    settings_ = fuzz_settings(data_dir, nameserver)
    settings_.data_dir.mkdir(parents=True, exist_ok=True)
    settings_.spool_path.mkdir(parents=True, exist_ok=True)
    await upgrade_async(settings_.database_url)
    services = Services.build(settings_)
    await create_domain(services.db, "example.test")
    admin = await create_key(services.db, "fuzz admin")
    scoped = await create_key(services.db, "fuzz scoped", "example.test")
    built = Target(loop, _client(services), services, admin.key, scoped.key, nameserver, statuses)
    built.real_ids = await built.seed()
    return built


def _client(services: Services) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_api(services), raise_app_exceptions=False),
        base_url=BASE,
    )


def copy_target(closed: Target, data_dir: Path) -> Target:
    """A Postline on a copy of the data directory of ``closed`` (closed): the same
    resources and keys, in milliseconds rather than a migration and a seeding."""
    shutil.copytree(closed.services.settings.data_dir, data_dir)
    services = Services.build(fuzz_settings(data_dir, closed.nameserver))
    return replace(closed, client=_client(services), services=services)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    dns = FakeDNS()
    dns.start()
    loop = asyncio.new_event_loop()
    data_dir = tmp_path_factory.mktemp("fuzz") / "data"
    built = loop.run_until_complete(open_target(data_dir, dns.nameserver, loop, Counter()))
    REAL_IDS.update(built.real_ids)
    print(f"\n{replay_hint()}")
    try:
        yield built
    finally:
        tally = ", ".join(f"{code}: {n}" for code, n in sorted(built.statuses.items()))
        server_errors = sum(n for code, n in built.statuses.items() if code >= 500)
        print(f"\nfuzz: {built.statuses.total()} requests, {server_errors} answered 5xx ({tally})")
        links = ", ".join(f"{step}: {n}" for step, n in sorted(built.followed.items()))
        print(f"fuzz: {built.followed.total()} stateful steps on created resources ({links})")
        loop.run_until_complete(built.close())
        loop.close()
        dns.stop()
        REAL_IDS.clear()


def validate(case: Case, response: httpx.Response | Response) -> None:
    """Every check, with the seed that replays the run on the failure."""
    try:
        case.validate_response(response, checks=CHECKS)
    except BaseException as exc:
        exc.add_note(replay_hint())
        raise


@schema.parametrize()
@settings(FUZZ, max_examples=ADMIN_EXAMPLES)
def test_every_operation_admin_key(case: Case, target: Target) -> None:
    validate(case, target.send(case, target.admin_key))


@scoped_schema.parametrize()
@settings(FUZZ, max_examples=SCOPED_EXAMPLES)
def test_every_operation_scoped_key(case: Case, target: Target) -> None:
    validate(case, target.send(case, target.scoped_key))


#: A created email's or webhook's id: ``(method, path template)`` of the step that made it.
_CREATES = {("POST", "/v1/emails"), ("POST", "/v1/emails/batch"), ("POST", "/v1/webhooks")}


def _created_ids(case: Case, response: httpx.Response) -> list[str]:
    if (case.method.upper(), case.path) not in _CREATES or response.status_code >= 300:
        return []
    body = response.json()
    items = body.get("data", [body]) if isinstance(body, dict) else []
    return [str(item["id"]) for item in items if isinstance(item, dict) and "id" in item]


@pytest.mark.parametrize("resource", ["emails", "webhooks"])
def test_linked_calls(resource: str, target: Target, tmp_path: Path) -> None:
    """Sequences of calls that follow the links: send, then read, cancel or fetch the
    content of what was sent; register an endpoint, then read, patch, rotate, test,
    replay and delete it. Each step is checked as in the runs above.

    Each sequence runs on a Postline of its own (a copy of one seeded as ``target`` is,
    on its own SQLite database): with state left over from the sequences before, the
    same draws would meet other answers, which Hypothesis refuses as flaky data
    generation.
    """
    worlds = itertools.count()
    shared_ids = dict(REAL_IDS)
    template = target.run(
        open_target(tmp_path / "template", target.nameserver, target.loop, target.statuses)
    )
    target.run(template.close())

    class Linked(LINKED[resource].as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            self.created: set[str] = set()
            self.world = copy_target(template, tmp_path / f"world{next(worlds)}")
            REAL_IDS.clear()
            REAL_IDS.update(self.world.real_ids)

        def teardown(self) -> None:
            target.run(self.world.close())

        def call(self, case: Case, **kwargs: Any) -> Response:
            response = self.world.send(case, self.world.admin_key)
            used = set((case.path_parameters or {}).values()) & self.created
            if used:
                target.followed[f"{case.operation.label} {response.status_code}"] += 1
            self.created.update(_created_ids(case, response))
            return Response.from_any(response)

        def validate_response(
            self, response: Response, case: Case, additional_checks: Any = None, **kwargs: Any
        ) -> None:
            validate(case, response)

    machine: type[APIStateMachine] = seed(SEED)(Linked)
    try:
        machine.run(
            settings=settings(
                FUZZ, max_examples=STATEFUL_EXAMPLES, stateful_step_count=STATEFUL_STEPS
            )
        )
    finally:
        REAL_IDS.clear()
        REAL_IDS.update(shared_ids)
    # The links were followed: some step used a resource that an earlier step created.
    assert any(f"/v1/{resource}/{{" in label for label in target.followed), target.followed
