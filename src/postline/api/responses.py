"""The problem answers of each operation, declared in the OpenAPI document.

Every error a client can cause is an RFC 9457 problem object sent as
``application/problem+json`` (``problems.py``). FastAPI only documents its own
``422 HTTPValidationError`` in ``application/json``, which is not what Postline
answers; the routers declare these responses instead, so that a generated
client, or a schema-driven fuzzer (tests/fuzz), can rely on every status code
and body the API really sends.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

PROBLEM_MEDIA_TYPE = "application/problem+json"

#: The ``Problem`` component: RFC 9457 members plus Postline's ``errors`` (one per field).
PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "description": "A URI naming the kind of problem."},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
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
    400: "Malformed request: the body is not JSON, or no body was sent",
    401: "Missing, invalid or revoked API key",
    403: "The key's domain scope does not cover this (or an unscoped key is needed)",
    404: "Unknown, or not visible to this key",
    409: "Conflict with the current state (e.g. an Idempotency-Key reused with another body)",
    410: "No longer kept (e.g. a message body past its retention)",
    413: "The request body is too large",
    422: "A field is invalid; `errors` names each one",
    429: "Rate limited: retry after `Retry-After` seconds",
    503: "Storage or the queue is unavailable; nothing was changed",
    507: "Storage is full; nothing was accepted",
}

_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again",
        "schema": {"type": "string"},
    }
}

#: The answers every authenticated operation may give, whatever it does.
AUTHENTICATED = (401, 403, 422, 429, 503, 507)
#: Operations that take a JSON body.
WITH_BODY = (400, 413)


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a router or a route: these statuses answer with a problem object."""
    declared: dict[int | str, dict[str, Any]] = {}
    for status in sorted(set(statuses)):
        response: dict[str, Any] = {
            "description": _DESCRIPTIONS.get(status, "Problem"),
            "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        if status in (429, 503, 507):
            response["headers"] = _RETRY_AFTER
        declared[status] = response
    return declared


def document_problems(app: FastAPI) -> None:
    """Add the ``Problem`` component that the declared responses refer to."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = build()
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            schemas["Problem"] = PROBLEM_SCHEMA
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
