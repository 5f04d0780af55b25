"""No route of the API or the dashboard runs a dependency or an endpoint in the thread
pool: FastAPI hands a plain function to it, one thread hand-off per request per function
(6.6% of the API process's samples at 200 single sends a second, from one plain
``services`` dependency)."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.routing import Mount

from postline.api.app import create_api
from postline.app import Services
from tests.harness import postline as harness


def _routes(routes: list[Any]) -> Iterator[APIRoute]:
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif isinstance(route, Mount):
            yield from _routes(list(getattr(route.app, "routes", [])))
        elif hasattr(route, "original_router"):  # FastAPI's entry for include_router
            yield from _routes(route.original_router.routes)


def _calls(dependant: Dependant) -> Iterator[Any]:
    if dependant.call is not None:
        yield dependant.call
    for inner in dependant.dependencies:
        yield from _calls(inner)


def _runs_in_place(call: Any) -> bool:
    return inspect.iscoroutinefunction(call) or inspect.iscoroutinefunction(
        getattr(call, "__call__", None)  # noqa: B004 - a class instance such as HTTPBearer
    )


def test_every_route_dependency_and_endpoint_is_a_coroutine(tmp_path: Path) -> None:
    app = create_api(Services.build(harness.test_settings(tmp_path)))
    routes = list(_routes(app.routes))
    assert len(routes) > 50
    in_the_pool = sorted(
        f"{route.path}: {getattr(call, '__name__', call)}"
        for route in routes
        for call in _calls(route.dependant)
        if not _runs_in_place(call)
    )
    assert in_the_pool == []
