"""Adds the dashboard to the API's application: its pages and its assets."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from postline.dashboard import manage, pages, web


def install(app: FastAPI) -> None:
    app.mount(web.ASSETS_PATH, StaticFiles(directory=web.HERE / "static"), name="dashboard-assets")
    app.include_router(pages.router)
    app.include_router(manage.router)
