"""What the fuzzers found, pinned as plain requests so that it stays fixed.

test_openapi.py and tests/unit/test_properties_*.py found these; their
generated inputs can move when strategies change, so each finding is repeated
here as one fixed request with the answer it must get.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.harness.postline import Factory, PostlineUnderTest

PROBLEM_JSON = "application/problem+json"


@pytest.fixture
async def api(postline_factory: Factory) -> PostlineUnderTest:
    return await postline_factory(engine=False)


def email(**fields: Any) -> dict[str, Any]:
    return {
        "from": "Sender <sender@example.test>",
        "to": "rcpt@dest.test",
        "subject": "Hello",
        "text": "Hi",
        **fields,
    }


def assert_422(response: httpx.Response, field: str) -> None:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    fields = [error["field"] for error in response.json()["errors"]]
    assert any(f.startswith(field) for f in fields), fields


@pytest.mark.parametrize(
    ("query", "field"),
    [
        # A time with no UTC equivalent: was a 500 (OverflowError in the store).
        ("since=0001-01-01T00:00:00%2B01:00", "since"),
        ("until=9999-12-31T23:59:59-01:00", "until"),
        # Unix time: pydantic took it; the document (and docs/API.md) say RFC 3339.
        ("until=0.5", "until"),
        ("since=1700000000", "since"),
    ],
)
async def test_list_times_outside_rfc3339_or_utc_are_422(
    api: PostlineUnderTest, query: str, field: str
) -> None:
    assert_422(await api.client.get(f"/v1/emails?{query}", headers=api.auth()), field)


async def test_scheduled_at_as_unix_time_is_422(api: PostlineUnderTest) -> None:
    response = await api.client.post(
        "/v1/emails", json=email(scheduled_at=1700000000), headers=api.auth()
    )
    assert_422(response, "scheduled_at")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        # A header name with a final newline passed `$` and split the header block.
        ({"headers": {"X-Campaign\n": "spring"}}, "headers"),
        # A content type with a final newline ended the attachment's MIME headers early.
        (
            {
                "attachments": [
                    {"filename": "a.txt", "content": "aGk=", "content_type": "text/plain\n"}
                ]
            },
            "attachments",
        ),
        ({"tags": {"kind\n": "welcome"}}, "tags"),
    ],
)
async def test_final_newline_in_header_tokens_is_422(
    api: PostlineUnderTest, fields: dict[str, Any], field: str
) -> None:
    response = await api.client.post("/v1/emails", json=email(**fields), headers=api.auth())
    assert_422(response, field)


async def test_domain_with_a_newline_inside_is_422(api: PostlineUnderTest) -> None:
    response = await api.client.post(
        "/v1/domains", json={"name": "mail\n.test"}, headers=api.auth()
    )
    assert_422(response, "name")


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/v1/emails", {"GET", "HEAD", "POST"}),
        ("/v1/webhooks/wh_x", {"GET", "HEAD", "PATCH", "DELETE"}),
        ("/v1/emails/em_x/cancel", {"POST"}),
    ],
)
async def test_method_not_allowed_names_every_allowed_method(
    api: PostlineUnderTest, path: str, allowed: set[str]
) -> None:
    # The header was dropped (RFC 9110 requires it); Starlette's own named one route only.
    response = await api.client.request("TRACE", path, headers=api.auth())
    assert response.status_code == 405
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    assert set(response.headers["allow"].replace(" ", "").split(",")) == allowed


async def test_document_declares_the_problems_the_api_answers(api: PostlineUnderTest) -> None:
    document = (await api.client.get("/openapi.json")).json()
    assert "Problem" in document["components"]["schemas"]
    send = document["paths"]["/v1/emails"]["post"]["responses"]
    for status in ("400", "401", "403", "409", "413", "422", "429", "503", "507"):
        assert PROBLEM_JSON in send[status]["content"], status
    assert "HTTPValidationError" not in document["components"]["schemas"]
    metrics = document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]
    to = document["components"]["schemas"]["EmailIn"]["properties"]["to"]
    assert {"type": "string"} in to["anyOf"]
