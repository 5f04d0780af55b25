"""``/docs`` and ``/redoc`` work with the network cut: every asset they load is served
by Postline itself, with the content type a browser needs to use it.

No browser renders the pages here: their HTML is read for every URL it loads (``src``,
``href``, Swagger UI's ``url`` and Redoc's ``spec-url``), and each one is fetched from
the app.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from postline.api.app import create_api
from postline.app import Services
from tests.harness import postline as harness

#: Where a page's HTML names something the browser will fetch.
_REFERENCES = re.compile(r"""(?:\bsrc=|\bhref=|\bspec-url=|\burl:\s*)["']([^"']+)["']""")

_CONTENT_TYPES = {
    ".js": ("text/javascript", "application/javascript"),
    ".css": ("text/css",),
    ".png": ("image/png",),
    ".json": ("application/json",),
}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    data_dir = Path(tmp_path_factory.mktemp("docs"))
    return create_api(Services.build(harness.test_settings(data_dir)))


@pytest_asyncio.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://postline.test") as c:
        yield c


def references(html: str) -> list[str]:
    return _REFERENCES.findall(html)


@pytest.mark.parametrize(
    ("page", "wanted"),
    [
        ("/docs", {"swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"}),
        ("/redoc", {"redoc.standalone.js", "favicon-32x32.png"}),
    ],
)
async def test_the_page_loads_nothing_from_another_host(
    client: httpx.AsyncClient, page: str, wanted: set[str]
) -> None:
    response = await client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert re.findall(r"https?://", html) == [], html
    found = references(html)
    assert {ref.rsplit("/", 1)[-1] for ref in found} == wanted | {"openapi.json"}
    for ref in found:
        assert ref.startswith("/"), ref
        answer = await client.get(ref)
        assert answer.status_code == 200, ref
        suffix = Path(ref).suffix
        media_type = answer.headers["content-type"].split(";")[0]
        assert media_type in _CONTENT_TYPES[suffix], (ref, media_type)
        assert len(answer.content) > 0


async def test_swagger_ui_does_not_send_the_document_to_its_validator(
    client: httpx.AsyncClient,
) -> None:
    html = (await client.get("/docs")).text
    assert '"validatorUrl": null' in html


async def test_the_assets_are_the_vendored_files_byte_for_byte(client: httpx.AsyncClient) -> None:
    static = Path(__file__).parents[2] / "src" / "postline" / "api" / "static"
    for name in ("swagger-ui/swagger-ui-bundle.js", "redoc/redoc.standalone.js"):
        answer = await client.get(f"/docs/assets/{name}")
        assert answer.content == (static / name).read_bytes()


async def test_behind_a_proxy_prefix_the_pages_name_prefixed_urls(app: FastAPI) -> None:
    transport = httpx.ASGITransport(app=app, root_path="/mail")
    async with httpx.AsyncClient(transport=transport, base_url="http://postline.test") as c:
        for page in ("/docs", "/redoc"):
            found = references((await c.get(page)).text)
            assert found and all(ref.startswith("/mail/") for ref in found), found


async def test_an_unknown_asset_is_a_404_problem(client: httpx.AsyncClient) -> None:
    answer = await client.get(
        "/docs/assets/swagger-ui/nothing.js", headers={"Accept": "application/problem+json"}
    )
    assert answer.status_code == 404
    assert answer.headers["content-type"] == "application/problem+json"


def test_fastapis_cdn_pages_are_not_served(app: FastAPI) -> None:
    assert app.docs_url is None and app.redoc_url is None
