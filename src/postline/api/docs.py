"""The interactive API documentation, ``/docs`` (Swagger UI) and ``/redoc``, working offline.

FastAPI's own pages load Swagger UI and Redoc from a CDN (and Redoc its fonts from
Google), so they were blank without network access and told a third party each time
someone read the docs. These are the same pages, pointed at copies of the assets that
ship inside the package (``static/``, with their versions and a refresh command in
``static/README.md``) and are served from ``/docs/assets/``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_PATH = "/docs"
REDOC_PATH = "/redoc"
ASSETS_PATH = "/docs/assets"
STATIC_DIR = Path(__file__).parent / "static"

_SWAGGER_JS = "swagger-ui/swagger-ui-bundle.js"
_SWAGGER_CSS = "swagger-ui/swagger-ui.css"
_FAVICON = "swagger-ui/favicon-32x32.png"
_REDOC_JS = "redoc/redoc.standalone.js"

#: Swagger UI sends the document to validator.swagger.io unless told not to.
_SWAGGER_PARAMETERS = {"validatorUrl": None}


def _prefix(request: Request) -> str:
    """The path the app is mounted under behind a proxy (``root_path``), as FastAPI's own
    pages do, so that the asset and document URLs resolve from the browser."""
    root: str = request.scope.get("root_path", "")
    return root.rstrip("/")


def _asset(request: Request, name: str) -> str:
    return f"{_prefix(request)}{ASSETS_PATH}/{name}"


def install(app: FastAPI) -> None:
    """Serve the two pages and their assets; create the app with ``docs_url=None`` and
    ``redoc_url=None`` so that FastAPI's CDN pages are not added as well."""
    app.mount(ASSETS_PATH, StaticFiles(directory=STATIC_DIR), name="docs-assets")

    @app.get(DOCS_PATH, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=f"{_prefix(request)}{app.openapi_url}",
            title=f"{app.title} API",
            swagger_js_url=_asset(request, _SWAGGER_JS),
            swagger_css_url=_asset(request, _SWAGGER_CSS),
            swagger_favicon_url=_asset(request, _FAVICON),
            swagger_ui_parameters=_SWAGGER_PARAMETERS,
        )

    @app.get(REDOC_PATH, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        return get_redoc_html(
            openapi_url=f"{_prefix(request)}{app.openapi_url}",
            title=f"{app.title} API",
            redoc_js_url=_asset(request, _REDOC_JS),
            redoc_favicon_url=_asset(request, _FAVICON),
            with_google_fonts=False,
        )
