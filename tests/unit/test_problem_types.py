"""Problem ``type`` members are URNs (``urn:postline:problem:<slug>``): they name the kind
of problem without pointing at a web site, which a client might try to fetch."""

from __future__ import annotations

import json

import pytest

from postline.api.problems import problem_response


@pytest.mark.parametrize(
    ("status", "slug"),
    [
        (400, "malformed-request"),
        (401, "unauthorized"),
        (404, "not-found"),
        (409, "conflict"),
        (413, "payload-too-large"),
        (422, "invalid-request"),
        (429, "too-many-requests"),
        (503, "service-unavailable"),
        (507, "insufficient-storage"),
        (418, "error"),
    ],
)
def test_the_type_is_a_urn_named_after_the_title(status: int, slug: str) -> None:
    response = problem_response(status, "what went wrong")
    body = json.loads(bytes(response.body))
    assert body["type"] == f"urn:postline:problem:{slug}"
    assert body["status"] == status
    assert response.media_type == "application/problem+json"
