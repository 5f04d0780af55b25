"""``GET /v1``: the URL the banner prints answers, without a key, what runs there and
where its documentation is (it was a 404)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from postline import __version__
from postline.api.app import create_api
from postline.app import Services
from tests.harness import postline as harness


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    data_dir = Path(tmp_path_factory.mktemp("index"))
    return create_api(Services.build(harness.test_settings(data_dir)))


async def test_the_index_needs_no_key_and_names_the_docs(app: FastAPI) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://postline.test") as client:
        response = await client.get("/v1")
        assert response.status_code == 200, response.text
        assert response.json() == {
            "object": "index",
            "name": "Postline",
            "version": __version__,
            "docs": "/docs",
            "redoc": "/redoc",
            "openapi": "/openapi.json",
        }
        for link in ("docs", "redoc", "openapi"):
            assert (await client.get(response.json()[link])).status_code == 200, link


def test_the_index_is_documented_as_public(app: FastAPI) -> None:
    operation = app.openapi()["paths"]["/v1"]["get"]
    assert "security" not in operation
    assert set(operation["responses"]) == {"200"}
