"""The send routes take their usual requests straight to their endpoint
(``api.emails._SendRoute``), past FastAPI's request handler: every kind of request gets
the answer FastAPI's handler gives it, and a JSON send never meets the dependency solver.
"""

from __future__ import annotations

import json
from typing import Any

import fastapi.routing
import httpx
import pytest

from postline.api import emails
from postline.keys import create_key
from tests.harness.postline import Factory, PostlineUnderTest

EMAIL = {
    "from": "Sender <sender@example.test>",
    "to": ["alice@dest.test"],
    "subject": "Hello",
    "text": "Hello from Postline",
}
VALID = json.dumps(EMAIL).encode()

#: (path, Content-Type or None, body): the usual request and every odd one we know of.
REQUESTS = [
    ("/v1/emails", "application/json", VALID),
    ("/v1/emails", "application/json; charset=utf-8", VALID),
    ("/v1/emails", "Application/JSON", VALID),
    ("/v1/emails", None, VALID),
    ("/v1/emails", "text/plain", VALID),
    ("/v1/emails", "application/vnd.postline+json", VALID),
    ("/v1/emails", "application/json", b""),
    ("/v1/emails", "application/json", b"{bad json}"),
    ("/v1/emails", "application/json", b"\xff\xfe{}"),
    ("/v1/emails", "application/json", b"[]"),
    ("/v1/emails", "application/json", b"null"),
    ("/v1/emails", "application/json", b'"text"'),
    ("/v1/emails", "application/json", json.dumps({"from": "nobody"}).encode()),
    ("/v1/emails", "application/json", json.dumps({**EMAIL, "from": "a@elsewhere.test"}).encode()),
    ("/v1/emails/batch", "application/json", json.dumps([EMAIL, EMAIL]).encode()),
    ("/v1/emails/batch", "application/json", b"{}"),
    ("/v1/emails/batch", "application/json", b"[]"),
    ("/v1/emails/batch", "text/plain", json.dumps([EMAIL]).encode()),
]


def _comparable(response: httpx.Response) -> tuple[int, str, Any]:
    """Status, content type and body, with what differs on every send (ids) left out."""
    body: Any = response.json() if response.content else None
    items: list[Any] = body["data"] if isinstance(body, dict) and "data" in body else [body]
    for item in items:
        if isinstance(item, dict) and response.status_code == 202:
            item.update(id="em_...", message_id="<em_...>")
    return response.status_code, response.headers.get("content-type", ""), body


async def _post(
    postline: PostlineUnderTest,
    path: str,
    content_type: str | None,
    content: bytes,
    key: str | None = None,
) -> httpx.Response:
    headers = postline.auth(key)
    if content_type is not None:
        headers["Content-Type"] = content_type
    return await postline.client.post(path, content=content, headers=headers)


@pytest.mark.parametrize(("path", "content_type", "content"), REQUESTS)
async def test_every_request_gets_the_answer_fastapis_handler_gives(
    postline_factory: Factory,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    content_type: str | None,
    content: bytes,
) -> None:
    postline = await postline_factory(engine=False)
    reader = (await create_key(postline.services.db, "reader", scopes=["read"])).key
    answers: dict[str, list[tuple[int, str, Any]]] = {"straight": [], "fastapi": []}
    for way in answers:
        if way == "fastapi":
            monkeypatch.setattr(emails, "_STRAIGHT", frozenset())
        for key in (None, reader):  # an admin key; a key without the send scope (403)
            response = await _post(postline, path, content_type, content, key)
            answers[way].append(_comparable(response))
    assert answers["straight"] == answers["fastapi"]


async def test_a_json_send_never_meets_fastapis_dependency_solver(
    postline_factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FastAPI's handler was 15% of the API process's samples at 200 single sends a
    second."""
    postline = await postline_factory(engine=False)
    solved: list[str] = []
    real = fastapi.routing.solve_dependencies  # type: ignore[attr-defined]

    async def counted(*args: Any, **kwargs: Any) -> Any:
        solved.append(kwargs["request"].url.path)
        return await real(*args, **kwargs)

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", counted)
    for path, body in (("/v1/emails", VALID), ("/v1/emails/batch", b"[" + VALID + b"]")):
        response = await _post(postline, path, "application/json", body)
        assert response.status_code == 202, response.text
    assert solved == []
    response = await _post(postline, "/v1/emails", "text/plain", VALID)
    assert solved == ["/v1/emails"]  # not JSON: FastAPI's handler answers it
    assert response.status_code == 400, response.text
