"""Accepting a send once under an ``Idempotency-Key`` (docs/API.md, "Idempotency").

One path for every send route (``POST /v1/emails``, ``/batch``, ``/raw``), so that a
retry of any of them is answered the same way: the first answer again, a 409 for
the key with another body or while the first is still being accepted, and nothing
stored for a request that failed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import Response
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncConnection

from postline.accept import Accepted, Submission
from postline.api.problems import Problem
from postline.app import Services
from postline.keys import Principal
from postline.store import idempotency
from postline.store.types import utcnow

#: Turns what was accepted into the JSON answer (stored, and replayed as it was).
Shape = Callable[[list[Accepted]], Any]


def check_key(key: str | None) -> None:
    """A 400 for an empty key, a 422 for one too long: before anything is accepted."""
    if key is None:
        return
    if not key.strip():
        # Not "no key": a client that meant to send one would lose its protection
        # against sending twice without a word.
        message = "is empty: send a key unique to this request, or leave the header out"
        errors = [{"field": "Idempotency-Key", "message": message}]
        raise Problem(400, f"Idempotency-Key {message}", errors, name="invalid_idempotency_key")
    if not 1 <= len(key) <= 256:
        raise Problem(
            422, "Idempotency-Key must be 1 to 256 characters", name="invalid_idempotency_key"
        )


def answer(status: int, body: Any, replayed: bool = False) -> Response:
    """A send's answer, built here for the replay header: rendered as FastAPI renders
    every other answer (compact), so one client sees one JSON style."""
    headers = {"Idempotent-Replayed": "true"} if replayed else None
    return JSONResponse(body, status_code=status, headers=headers)


def _still_running() -> Problem:
    """Another request with this key is being accepted (or was claimed a moment ago)."""
    return Problem(
        409,
        "a request with this Idempotency-Key is still running",
        name="concurrent_idempotent_requests",
    )


async def accept_once(
    svc: Services,
    caller: Principal,
    submissions: Sequence[Submission],
    *,
    key: str | None,
    request: Callable[[], dict[str, Any]],
    shape: Shape,
) -> Response:
    """Accept ``submissions`` and answer 202; under ``key``, only once per ``request()``
    (the endpoint and what was sent, as JSON: equal requests must give equal JSON).

    ``request`` is called only under a key: dumping the largest batch's 500 emails to
    compare them took the event loop 8-20 ms that a send without a key does not need.
    """
    check_key(key)
    if key is not None:
        fingerprint = json.dumps(request(), sort_keys=True).encode()
        digest = hashlib.sha256(fingerprint).hexdigest()
        now = utcnow()
        async with svc.db.write() as conn:
            previous = await idempotency.find(conn, caller.key_id, key, now)
            if previous is not None:
                if previous.request_hash != digest:
                    raise Problem(
                        409,
                        "this Idempotency-Key was used with a different body",
                        name="invalid_idempotent_request",
                    )
                if previous.state != "done":
                    raise _still_running()
                return answer(202, previous.response, replayed=True)
            if not await idempotency.insert_running(conn, caller.key_id, key, digest, now):
                raise _still_running()

    async def remember(conn: AsyncConnection, results: list[Accepted]) -> None:
        # In the accept's own transaction: the answer is stored exactly when the emails are.
        if key is not None:
            await idempotency.complete(conn, caller.key_id, key, shape(results))

    try:
        results = await svc.acceptor.accept(submissions, caller, on_commit=remember)
    except BaseException:
        if key is not None:
            async with svc.db.write() as conn:
                await idempotency.forget(conn, caller.key_id, key)
        raise
    return answer(202, shape(results))
