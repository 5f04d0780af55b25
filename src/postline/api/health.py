"""Liveness, readiness and Prometheus metrics (no authentication)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import PlainTextResponse

from postline.api import answers
from postline.api.auth import Svc
from postline.api.problems import problem_response
from postline.api.responses import problem_responses

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="The process is alive", response_model=answers.Status)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="The database and the queue answer",
    response_model=None,
    responses={200: {"model": answers.Status}, **problem_responses(503)},
)
async def readyz(svc: Svc) -> Response | dict[str, str]:
    try:
        await svc.db.ping()
        await svc.queue.depth()
    except Exception as exc:
        return problem_response(503, f"not ready: {type(exc).__name__}")
    return {"status": "ready"}


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=PlainTextResponse,
    responses=problem_responses(503),
)
async def metrics(svc: Svc) -> Response:
    depth = await svc.queue.depth()
    svc.metrics.queue_depth.set(sum(depth.values()))
    return Response(svc.metrics.render(), media_type="text/plain; version=0.0.4")
