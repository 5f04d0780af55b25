"""``GET /v1``: the API's front door answers (without a key) what it is and where its
documentation lives, instead of a 404 for the URL the banner prints."""

from __future__ import annotations

from fastapi import APIRouter, Request

from postline import __version__
from postline.api import answers
from postline.api.docs import DOCS_PATH, REDOC_PATH

router = APIRouter(tags=["operations"])


@router.get(
    "/v1", summary="This server's version and its API documentation", response_model=answers.Index
)
async def index(request: Request) -> dict[str, str]:
    return {
        "object": "index",
        "name": "Postline",
        "version": __version__,
        "docs": DOCS_PATH,
        "redoc": REDOC_PATH,
        "openapi": request.app.openapi_url,
    }
