"""The problem answers of each operation, declared in the OpenAPI document.

Every error a client can cause is an RFC 9457 problem object, sent as
``application/problem+json`` to a client whose ``Accept`` names that type and as
``application/json`` to the others (``problems.py``): both are declared. FastAPI
only documents its own ``422 HTTPValidationError``, which is not what Postline
answers. Each operation declares instead the problem statuses it can really give,
so that a generated client, a reader of ``/docs``, or a schema-driven fuzzer
(tests/fuzz, which fails on any status an operation does not declare) can rely on
them; a GET that listed 413 or 507 would tell a reader something false.

Most of them follow from what the route is (:func:`route_problems`): who may call it,
whether it takes a body, an id in its path, query parameters, an ``Idempotency-Key``,
whether it writes. What only its code knows (a scope check that is not the admin
check, a 409 of its own state, a 410) the route declares with
``responses=problem_responses(...)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from postline.api import auth

PROBLEM_MEDIA_TYPE = "application/problem+json"
#: Content negotiation (``problems.NegotiatedProblems``): the same body, either type.
PROBLEM_MEDIA_TYPES = (PROBLEM_MEDIA_TYPE, "application/json")

#: The ``Problem`` component: RFC 9457 members, Postline's ``errors`` (one per field), and
#: the members the Resend SDKs read (``name``, ``message``, ``statusCode``).
PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "type": "object",
    "required": ["type", "title", "status", "detail", "name", "message", "statusCode"],
    "properties": {
        "type": {
            "type": "string",
            "description": "The kind of problem, e.g. `urn:postline:problem:not-found`",
            "pattern": "^urn:postline:problem:[a-z-]+$",
        },
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "name": {
            "type": "string",
            "description": "Resend's name for the error, e.g. `validation_error`,"
            " `missing_api_key`, `invalid_api_key`, `invalid_from_address`, `not_found`,"
            " `rate_limit_exceeded`",
            "pattern": "^[a-z_]+$",
        },
        "message": {"type": "string", "description": "The same as `detail`"},
        "statusCode": {
            "type": "integer",
            "description": "The same as `status`",
            "minimum": 400,
            "maximum": 599,
        },
        "errors": {
            "type": "array",
            "description": "The fields at fault (400 and 422), e.g. `to[0]` or `[3].subject`.",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}

_DESCRIPTIONS = {
    400: "Malformed request: a body that is not JSON (or none), an invalid `cursor`,"
    " or an empty `Idempotency-Key`",
    401: "Missing, invalid or revoked API key",
    403: "The key's domain scope does not cover this (or an unscoped key is needed)",
    404: "Unknown, or not visible to this key",
    409: "Conflict with the current state (e.g. an Idempotency-Key reused with another body)",
    410: "No longer kept (e.g. a message body past its retention)",
    413: "The request body is too large",
    422: "A field is invalid; `errors` names each one",
    429: "Rate limited: retry after `Retry-After` seconds",
    503: "Storage or the queue is unavailable; nothing was changed",
    507: "Storage is full; nothing was kept",
}

_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again",
        "schema": {"type": "string"},
    }
}

#: Every call that needs a key: no key or a bad one, over the rate limit, storage down.
AUTHENTICATED = (401, 429, 503)
#: A JSON body: not JSON or missing, larger than the limit, a field that fails validation.
WITH_BODY = (400, 413, 422)
#: ``Idempotency-Key``: empty (400), reused with another body or still running (409),
#: longer than 256 characters (422).
IDEMPOTENCY = (400, 409, 422)
#: Database writes: a full disk is a 507 (``problems.storage_unavailable``), whatever
#: the operation writes. Reads never answer it.
WRITES = (507,)
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _dependants(root: Dependant) -> Iterator[Dependant]:
    """The route's own parameters and those of every dependency, however deep."""
    pending = [root]
    while pending:
        current = pending.pop()
        yield current
        pending.extend(current.dependencies)


def route_problems(route: APIRoute) -> set[int]:
    """The problem statuses an operation can answer, from what it is (module docstring)."""
    parts = list(_dependants(route.dependant))
    calls = {part.call for part in parts}
    query = {param.alias for part in parts for param in part.query_params}
    headers = {param.alias.lower() for part in parts for param in part.header_params}
    path_ids = [param.alias for part in parts for param in part.path_params]
    statuses: set[int] = set()
    if auth.principal in calls:
        statuses.update(AUTHENTICATED)
    if auth.admin in calls:
        statuses.add(403)
    if route.body_field is not None:
        statuses.update(WITH_BODY)
    if query - {"cursor"}:
        statuses.add(422)  # every query parameter but a cursor is typed or bounded
    if "cursor" in query:
        statuses.add(400)
    if "idempotency-key" in headers:
        statuses.update(IDEMPOTENCY)
    if any(name.endswith("_id") for name in path_ids):
        statuses.add(404)  # an id that names nothing this key may see
    if (route.methods or set()) - READ_METHODS:
        statuses.update(WRITES)
    return statuses


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a router or a route: these statuses answer with a problem object."""
    declared: dict[int | str, dict[str, Any]] = {}
    for status in sorted(set(statuses)):
        response: dict[str, Any] = {
            "description": _DESCRIPTIONS.get(status, "Problem"),
            "content": {
                media_type: {"schema": {"$ref": "#/components/schemas/Problem"}}
                for media_type in PROBLEM_MEDIA_TYPES
            },
        }
        if status in (429, 503, 507):
            response["headers"] = _RETRY_AFTER
        declared[status] = response
    return declared


def declare_problems(router: APIRouter) -> APIRouter:
    """``router``, each of its operations declaring the problems it can answer (its own
    declarations win). Idempotent: the routers are module-level, and every app includes
    them through this."""
    for route in router.routes:
        if isinstance(route, APIRoute) and route.include_in_schema:
            statuses = route_problems(route)
            route.responses = {**problem_responses(*statuses), **route.responses}
            if 401 in statuses:  # it needs a key (``AUTHENTICATED``)
                route.openapi_extra = {**(route.openapi_extra or {}), "security": _BEARER}
    return router


#: An operation's ``security``: the API key scheme (``auth.bearer``), no OAuth scopes.
_BEARER: list[dict[str, list[str]]] = [{auth.bearer.scheme_name: []}]


def _without_fastapi_422(document: dict[str, Any]) -> None:
    """FastAPI documents ``422 HTTPValidationError`` for every operation with a parameter
    that declares no 422 of its own, even where no parameter can fail validation (a
    string id in the path). Postline never sends that shape: drop it and its schemas."""
    for operations in document["paths"].values():
        for operation in operations.values():
            answer = operation["responses"].get("422", {})
            schema = answer.get("content", {}).get("application/json", {}).get("schema", {})
            if schema.get("$ref", "").endswith("/HTTPValidationError"):
                del operation["responses"]["422"]
    schemas = document.get("components", {}).get("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)


def document_problems(app: FastAPI) -> None:
    """Add the ``Problem`` component that the declared responses refer to, and the API
    key scheme the operations' ``security`` names (``declare_problems``)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = build()
            _without_fastapi_422(document)
            components = document.setdefault("components", {})
            components.setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
            components.setdefault("securitySchemes", {})[auth.bearer.scheme_name] = (
                auth.bearer.model.model_dump(by_alias=True, exclude_none=True, mode="json")
            )
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
