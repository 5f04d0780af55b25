"""RFC 9457 problem answers for every error a client can cause, and for ours."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from postline.accept import AcceptError
from postline.backoff import first_line
from postline.spool import SpoolError, SpoolFull
from postline.store.errors import is_disk_full

log = logging.getLogger("postline.api")

_TITLES = {
    400: "Malformed request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    410: "Gone",
    413: "Payload too large",
    415: "Unsupported media type",
    422: "Invalid request",
    429: "Too many requests",
    500: "Internal error",
    503: "Service unavailable",
    507: "Insufficient storage",
}


#: Resend's error names (its ``name`` member), which its SDKs turn into their error
#: classes: a status's usual one. A route with a more precise one says so (``Problem.name``).
_NAMES = {
    400: "validation_error",
    401: "missing_api_key",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    410: "gone",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limit_exceeded",
    500: "application_error",
    503: "service_unavailable",
    507: "insufficient_storage",
}


def problem_name(status: int) -> str:
    return _NAMES.get(status, "application_error")


class Problem(Exception):
    """Raise anywhere in a request to answer with a problem object. ``name``: the
    Resend-style name when the status's usual one (``problem_name``) says too little."""

    def __init__(
        self,
        status: int,
        detail: str,
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = errors
        self.headers = headers
        self.name = name


PROBLEM_MEDIA_TYPE = "application/problem+json"

#: RFC 9457 asks for a URI in ``type``; a URN names the kind of problem without pointing at
#: a web site that the project does not control (and a client should not fetch).
TYPE_PREFIX = "urn:postline:problem:"


def problem_type(status: int) -> str:
    """``urn:postline:problem:not-found``: the title of the status, as a slug."""
    return TYPE_PREFIX + _TITLES.get(status, "Error").lower().replace(" ", "-")


def problem_response(
    status: int,
    detail: str,
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
    name: str | None = None,
) -> JSONResponse:
    """The problem document: RFC 9457's members, Postline's ``errors``, and the members
    the Resend SDKs read (``name``, ``message``, ``statusCode``). Sent as
    ``application/problem+json``; :class:`NegotiatedProblems` relabels it for clients
    that did not ask for that type."""
    body: dict[str, Any] = {
        "type": problem_type(status),
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "name": name or problem_name(status),
        "message": detail,
        "statusCode": status,
    }
    if errors:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


def wants_problem_json(accept: str) -> bool:
    """Whether an ``Accept`` header names ``application/problem+json`` (with q > 0).

    Only by name: ``*/*`` or ``application/*`` do not count, since the clients that
    send them (and those that send no Accept at all, like the Resend SDKs'
    ``application/json``) often check for ``application/json`` before they read a body.
    """
    for media_range in accept.split(","):
        media_type, *parameters = (part.strip() for part in media_range.split(";"))
        if media_type.lower() != PROBLEM_MEDIA_TYPE:
            continue
        quality = "1"
        for parameter in parameters:
            key, _, value = parameter.partition("=")
            if key.strip().lower() == "q":
                quality = value.strip()
        try:
            return float(quality) > 0
        except ValueError:
            return True  # a malformed q is no reason to refuse what was named
    return False


class NegotiatedProblems:
    """Serves problem documents as ``application/json`` unless the request's ``Accept``
    names ``application/problem+json``: the body is the same either way.

    Outermost, so that every problem is covered, those of ``body_guard`` included.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or wants_problem_json(Headers(scope=scope).get("accept", "")):
            await self.app(scope, receive, send)
            return

        async def relabel(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(raw=list(message["headers"]))
                if headers.get("content-type", "").startswith(PROBLEM_MEDIA_TYPE):
                    headers["content-type"] = "application/json"
                    message = {**message, "headers": headers.raw}
            await send(message)

        await self.app(scope, receive, relabel)


#: Seconds a client is asked to wait after a 507: an operator has to free space first.
FULL_RETRY_AFTER = "60"


def storage_full(exc: BaseException) -> JSONResponse:
    """507: the spool or the database is out of space. Accept is all or nothing, so the
    client learns that nothing of its request was kept and may send it again later."""
    # The driver's first line only: SQLAlchemy's message would quote the parameters.
    log.warning("storage full, refusing new mail: %s", first_line(exc))
    return problem_response(
        507,
        "storage is full (message spool or database); nothing was accepted, retry later",
        headers={"Retry-After": FULL_RETRY_AFTER},
    )


def storage_unavailable(exc: BaseException) -> JSONResponse:
    """507 when the database is full, else 503: the client may try again shortly."""
    if is_disk_full(exc):
        return storage_full(exc)
    log.error("database unavailable: %s", type(exc).__name__)
    return problem_response(
        503, "storage is unavailable; nothing was accepted", headers={"Retry-After": "5"}
    )


def field_path(loc: tuple[Any, ...] | list[Any]) -> str:
    """('body', 3, 'to', 0) -> '[3].to[0]': a batch's index first, then the field."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


_WHOLE_BODY_TYPE_ERRORS = {"model_attributes_type", "dict_type", "list_type", "model_type"}


def _validation_errors(
    exc: RequestValidationError, sent_json: bool
) -> tuple[int, list[dict[str, str]]]:
    errors = []
    for error in exc.errors():
        if error.get("type") == "json_invalid":
            return 400, [{"field": "body", "message": "the body is not valid JSON"}]
        loc = list(error.get("loc", ()))
        source = loc.pop(0) if loc and loc[0] in ("body", "query", "path", "header") else ""
        if source == "body" and not loc and error.get("type") == "missing":
            return 400, [{"field": "body", "message": "a JSON body is required"}]
        whole_body_wrong = error.get("type") in _WHOLE_BODY_TYPE_ERRORS
        if source == "body" and not loc and not sent_json and whole_body_wrong:
            message = "the body must be JSON, sent with Content-Type: application/json"
            return 400, [{"field": "body", "message": message}]
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        errors.append({"field": field_path(loc) or source or "body", "message": message})
    return 422, errors


def allowed_methods(request: Request) -> list[str]:
    """Every method the API document lists for this request's path (and HEAD with GET)."""
    methods: set[str] = set()
    for template, operations in request.app.openapi()["paths"].items():
        parts = re.split(r"(\{[^/}]+\})", template)
        pattern = "".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts)
        if re.fullmatch(pattern, request.url.path):
            methods |= {method.upper() for method in operations}
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


def install(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(_: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc.status, exc.detail, exc.errors, exc.headers, exc.name)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        content_type = request.headers.get("content-type", "")
        status, errors = _validation_errors(exc, "json" in content_type.lower())
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
        return problem_response(status, detail, errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers) if exc.headers else {}
        if exc.status_code == 405 and (allowed := allowed_methods(request)):
            # RFC 9110 15.5.6: name every allowed method. Starlette names only those of the
            # first route with this path (POST of /v1/emails, not its GET).
            headers["Allow"] = ", ".join(allowed)
        return problem_response(exc.status_code, str(exc.detail), headers=headers or None)

    @app.exception_handler(AcceptError)
    async def _accept(_: Request, exc: AcceptError) -> JSONResponse:
        # A 403 here is a from address the key may not send from.
        return problem_response(
            exc.status,
            exc.message,
            [{"field": exc.field, "message": exc.message}],
            name="invalid_from_address" if exc.status == 403 else None,
        )

    @app.exception_handler(SpoolFull)
    async def _full(_: Request, exc: SpoolFull) -> JSONResponse:
        return storage_full(exc)

    @app.exception_handler(SpoolError)
    async def _spool(_: Request, exc: SpoolError) -> JSONResponse:
        log.error("spool unavailable: %s", exc)
        return problem_response(503, "the message spool is unavailable; nothing was accepted")

    @app.exception_handler(OperationalError)
    @app.exception_handler(DBAPIError)
    async def _db(_: Request, exc: Exception) -> JSONResponse:
        return storage_unavailable(exc)

    @app.exception_handler(Exception)
    async def _bug(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return problem_response(500, "an internal error occurred; it has been logged")
