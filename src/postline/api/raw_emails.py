"""``POST /v1/emails/raw``: a message the client built, kept byte for byte.

It takes the submission port's path (``submission.raw``): the same checks of the
message, the same fields added in front of it (a ``Date``, a ``Message-ID`` when
missing), then the acceptor as for any email: DKIM-signed, one recipient row each,
the same size cap, suppressions and events. ``tags`` and ``Idempotency-Key`` work as
on ``POST /v1/emails`` (``postline.api.idempotent``).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request, Response

from postline.api import answers
from postline.api.auth import Sender, Svc
from postline.api.emails import within_limits
from postline.api.idempotent import accept_once
from postline.api.problems import Problem
from postline.api.responses import problem_responses
from postline.api.schemas import RawEmailIn
from postline.model import EmailSource
from postline.store.types import utcnow
from postline.submission.headers import HeaderError
from postline.submission.raw import raw_submission

router = APIRouter(prefix="/v1/emails", tags=["emails"])


async def _raw_within_limits(request: Request, svc: Svc, caller: Sender) -> None:
    """The rate limit's tokens, one per recipient, as for ``POST /v1/emails``."""
    await within_limits(request, svc, caller, batch=False)


@router.post(
    "/raw",
    status_code=202,
    summary="Send a message built by the client (RFC 5322, base64)",
    response_model=answers.EmailAccepted,
    dependencies=[Depends(_raw_within_limits)],
    responses=problem_responses(403, 413),
)
async def send_raw(
    svc: Svc,
    caller: Sender,
    body: RawEmailIn,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> Response:
    started = time.monotonic()
    # The envelope sender's domain, then the From header's: both must be the key's.
    await svc.acceptor.sending_domain(caller, body.from_, "from", {})
    try:
        submission = raw_submission(body.message, body.to, EmailSource.API, utcnow())
    except HeaderError as exc:
        raise Problem(422, f"raw: {exc}", [{"field": "raw", "message": str(exc)}]) from None
    submission = dataclasses.replace(submission, tags=body.tags)
    # As POST /v1/emails does; the endpoint is part of the request, so the same key on
    # another send route is the same key with a different body (409).
    answered = await accept_once(
        svc,
        caller,
        [submission],
        key=idempotency_key,
        request=lambda: {
            "endpoint": "raw",
            "emails": [body.model_dump(mode="json", by_alias=True)],
        },
        shape=lambda results: results[0].as_dict(),
    )
    svc.metrics.accept_seconds.observe(time.monotonic() - started)
    return answered
