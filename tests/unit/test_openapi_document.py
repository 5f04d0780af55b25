"""The OpenAPI document describes every success answer, and its links lead somewhere;
it declares bearer authentication where a key is needed, and for each operation the
problems it can answer, no more (``api/responses.py``).

Schemathesis (tests/fuzz/test_openapi.py) holds each answer to its documented schema:
an empty schema (``{}``), or a free-form object, would let any body pass. So every 2xx
answer with a body must name its fields, and every link (followed by the stateful runs)
must point at an operation of the document, with parameters that operation has.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from postline.api.app import create_api
from postline.app import Services
from tests.harness import postline as harness

Document = dict[str, Any]


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> Document:
    data_dir = Path(tmp_path_factory.mktemp("openapi"))
    openapi: Document = create_api(Services.build(harness.test_settings(data_dir))).openapi()
    return openapi


def _resolve(document: Document, schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its ``$ref`` (if any) followed, inside ``document``."""
    ref = schema.get("$ref")
    if ref is None:
        return schema
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return _resolve(document, node)


def _operations(document: Document) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
    ]


def _successes(document: Document) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (f"{method} {path}", code, answer)
        for method, path, operation in _operations(document)
        for code, answer in operation["responses"].items()
        if code.startswith("2")
    ]


def test_every_success_answer_with_a_body_names_its_fields(document: Document) -> None:
    vague = []
    for operation, code, answer in _successes(document):
        content = answer.get("content") or {}
        if code == "204":
            assert content == {}, f"{operation} {code} has no body, yet documents one"
            continue
        if not content:
            vague.append(f"{operation} {code}: no content")
        for media_type, body in content.items():
            schema = _resolve(document, body.get("schema") or {})
            if media_type == "application/json":
                if not schema.get("properties") or not schema.get("required"):
                    vague.append(f"{operation} {code} {media_type}: {schema}")
            elif schema.get("type") != "string":
                vague.append(f"{operation} {code} {media_type}: {schema}")
    assert vague == []


def test_the_walk_sees_every_operation(document: Document) -> None:
    """The check above would pass on a document it could not read: it reads them all."""
    assert len(_operations(document)) >= 30
    assert ("POST /v1/emails", "202") in {(op, code) for op, code, _ in _successes(document)}


def _operation_at(document: Document, ref: str) -> dict[str, Any]:
    path, _, method = ref.removeprefix("#/paths/").rpartition("/")
    operation: dict[str, Any] = document["paths"][path.replace("~1", "/").replace("~0", "~")][
        method
    ]
    return operation


def test_every_link_leads_to_an_operation_with_the_parameters_it_fills(
    document: Document,
) -> None:
    seen = 0
    for operation, code, answer in _successes(document):
        for name, link in (answer.get("links") or {}).items():
            target = _operation_at(document, link["operationRef"])
            accepts = {p["name"] for p in target.get("parameters", [])}
            assert set(link["parameters"]) <= accepts, (operation, code, name)
            for expression in link["parameters"].values():
                assert expression.startswith(("$response.body#/", "$request.path.")), expression
            seen += 1
    assert seen > 0


@pytest.mark.parametrize(
    ("operation", "code", "wanted"),
    [
        ("POST /v1/emails", "202", {"GetEmail", "GetEmailContent", "CancelEmail"}),
        ("POST /v1/emails/batch", "202", {"GetEmail"}),
        ("POST /v1/webhooks", "201", {"GetWebhook", "PatchWebhook", "DeleteWebhook"}),
        ("POST /v1/webhooks/{webhook_id}/test", "202", {"ReplayDelivery"}),
    ],
)
def test_the_email_and_webhook_resources_link_to_their_uses(
    document: Document, operation: str, code: str, wanted: set[str]
) -> None:
    answers = {(op, c): answer for op, c, answer in _successes(document)}
    assert wanted <= set(answers[operation, code].get("links") or {})


# -- authentication and the problems each operation declares ---------------------------------


def _errors(operation: dict[str, Any]) -> set[int]:
    return {int(code) for code in operation["responses"] if int(code) >= 400}


def test_bearer_authentication_is_declared_on_exactly_the_operations_that_need_a_key(
    document: Document,
) -> None:
    schemes = document["components"]["securitySchemes"]
    assert len(schemes) == 1
    [(name, scheme)] = schemes.items()
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer", scheme
    public = {"GET /v1", "GET /healthz", "GET /readyz", "GET /metrics"}
    for method, path, operation in _operations(document):
        where = f"{method} {path}"
        if where in public or path.startswith("/t/"):  # tracking: the token is the authority
            assert "security" not in operation, where
            assert 401 not in _errors(operation), where
        else:
            assert operation.get("security") == [{name: []}], where
            assert 401 in _errors(operation), where
    assert public <= {f"{m} {p}" for m, p, _ in _operations(document)}


@pytest.mark.parametrize(
    ("operation", "wanted"),
    [
        ("POST /v1/emails", {400, 401, 403, 409, 413, 422, 429, 503, 507}),
        ("POST /v1/emails/batch", {400, 401, 403, 409, 413, 422, 429, 503, 507}),
        ("GET /v1/emails", {400, 401, 403, 422, 429, 503}),
        ("GET /v1/emails/{email_id}", {401, 404, 429, 503}),
        # 422: a ``recipient`` longer than an address can be.
        ("GET /v1/emails/{email_id}/content", {401, 404, 410, 422, 429, 503}),
        ("POST /v1/emails/{email_id}/cancel", {401, 404, 409, 429, 503, 507}),
        ("PATCH /v1/emails/{email_id}", {400, 401, 404, 409, 413, 422, 429, 503, 507}),
        ("GET /v1/domains", {400, 401, 429, 503}),  # 400: a cursor of a one-page list
        ("DELETE /v1/domains/{domain_id}", {401, 403, 404, 409, 429, 503, 507}),
        ("GET /v1/api-keys", {400, 401, 403, 429, 503}),
        ("PATCH /v1/webhooks/{webhook_id}", {400, 401, 404, 413, 422, 429, 503, 507}),
        ("POST /v1/destinations/{domain}/breaker", {400, 401, 403, 413, 422, 429, 503, 507}),
        ("GET /readyz", {503}),
        ("GET /healthz", set()),
        ("GET /v1", set()),
    ],
)
def test_an_operation_declares_the_problems_it_can_answer(
    document: Document, operation: str, wanted: set[int]
) -> None:
    method, path = operation.split(" ")
    assert _errors(document["paths"][path][method.lower()]) == wanted


def test_no_read_declares_a_body_or_storage_problem(document: Document) -> None:
    """413 and 415 are about a request body, 507 about writing: a GET has neither."""
    reads = [(m, p, op) for m, p, op in _operations(document) if m == "GET"]
    assert len(reads) >= 10
    for method, path, operation in reads:
        assert not _errors(operation) & {413, 415, 507}, f"{method} {path}"


def test_every_problem_is_a_problem_object(document: Document) -> None:
    """Not FastAPI's ``HTTPValidationError``, which Postline never sends; in both media
    types content negotiation serves."""
    assert "HTTPValidationError" not in document["components"]["schemas"]
    problem = {"schema": {"$ref": "#/components/schemas/Problem"}}
    for method, path, operation in _operations(document):
        for code in _errors(operation):
            content = operation["responses"][str(code)]["content"]
            wanted = {"application/problem+json": problem, "application/json": problem}
            assert content == wanted, (method, path, code)


def test_the_problem_schema_has_the_members_the_resend_sdks_read(document: Document) -> None:
    schema = document["components"]["schemas"]["Problem"]
    assert {"name", "message", "statusCode"} <= set(schema["required"])
    assert schema["properties"]["statusCode"]["type"] == "integer"
