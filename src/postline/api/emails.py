"""/v1/emails: send, batch, the send log, one email's detail, cancel."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import pydantic_core
from fastapi import APIRouter, Body, Header, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import TypeAdapter, ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection

from postline.accept import MAX_SCHEDULE_AHEAD, Recipient, Submission
from postline.api import answers, auth, ratelimit
from postline.api.auth import Caller, Reader, Sender, Svc, domain_in_scope
from postline.api.cursors import page_after
from postline.api.idempotent import Shape, accept_once
from postline.api.problems import Problem
from postline.api.responses import problem_responses
from postline.api.schemas import Batch, BatchBody, EmailBody, EmailIn, RescheduleIn, Timestamp
from postline.api.templates import render_sends
from postline.api.views import email_detail, email_item, page
from postline.app import Services
from postline.ids import new_id
from postline.keys import Principal
from postline.message import Attachment, Content
from postline.model import (
    OWN_SOURCES,
    PENDING_STATUSES,
    EmailSource,
    EmailStatus,
    RecipientStatus,
)
from postline.outcomes import Outcome, apply_outcome, is_customer_mail, refresh_email_status
from postline.queue.base import Job
from postline.spool import SpoolMissing
from postline.store import emails as email_store
from postline.store.emails import Email
from postline.store.emails import Recipient as EmailRecipient
from postline.store.types import utcnow
from postline.validation import OverLimit, SubmissionLimits, check_request_limits, parse_mailbox

log = logging.getLogger("postline.api")


class _QuickJSONRequest(Request):
    """Parses its JSON body with pydantic-core's parser instead of ``json.loads``.

    FastAPI parses a request's body on the event loop, and no thread helps: both
    parsers hold the GIL until done. For the largest batch the caps allow (~13 MB)
    ``json.loads`` took 25-70 ms of the loop; this parser, without its string cache,
    takes a third of that. A refusal is the ``JSONDecodeError`` FastAPI answers 400.
    """

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = pydantic_core.from_json(body, cache_strings=False)
            except ValueError as exc:
                doc = body.decode("utf-8", "replace")
                raise json.JSONDecodeError(str(exc), doc, 0) from None
        return self._json


class _SendRoute(APIRoute):
    """A route whose endpoint sees a :class:`_QuickJSONRequest`; the two send routes'
    usual requests (a JSON object or array, parsed) go straight to their endpoint.

    FastAPI's request handler, around the endpoint, was 15% of the API process's
    samples at 200 single sends a second (py-spy), dependency solving 8.8% of them: it
    parses the content type with the email package, builds an error context and solves
    each dependency through its resolver, on every request. A send's dependencies are
    known: the services, the caller with the ``send`` scope, the body and the
    ``Idempotency-Key`` header; they are taken here in FastAPI's order (the body read
    and parsed first, then the caller), by the same functions. Any other request (no
    JSON content type, a body that does not parse) goes through FastAPI's handler,
    which answers it as it always did; the route, its parameters and so the OpenAPI
    document are FastAPI's as before.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        endpoint = self.endpoint

        async def quick(request: Request) -> Response:
            own = _QuickJSONRequest(request.scope, request.receive)
            if endpoint in _STRAIGHT:  # known once the module is loaded
                body = await _parsed_json(own)
                if body is not _NOT_PLAIN:
                    svc = auth.services(own)
                    caller = await auth.sender(await auth.principal(own))
                    key = own.headers.get("idempotency-key")
                    response: Response = await endpoint(own, svc, caller, body, key)
                    return response
            return await handler(own)

        return quick


#: ``_parsed_json``: not a request the send endpoints take straight.
_NOT_PLAIN = object()


async def _parsed_json(request: _QuickJSONRequest) -> Any:
    """The body as FastAPI gives it to a send endpoint, when it is JSON that parses."""
    content_type = request.headers.get("content-type", "")
    if content_type.partition(";")[0].strip().lower() != "application/json":
        return _NOT_PLAIN
    try:
        if not await request.body():
            return _NOT_PLAIN
        return await request.json()
    except HTTPException:
        raise  # as FastAPI's handler raises it
    except Exception:
        return _NOT_PLAIN  # FastAPI's handler reads it again and answers (422, 400)


router = APIRouter(
    route_class=_SendRoute,
    prefix="/v1/emails",
    tags=["emails"],
)

#: A scoped key sending from (or filtering on) a domain that is not its own.
_SCOPE = problem_responses(403)


async def within_limits(request: Request, svc: Svc, caller: Caller, *, batch: bool) -> None:
    """Count what the request asks for before a field of it is validated.

    The send endpoints take their body as parsed JSON (``schemas.EmailBody``) and call
    this before they validate it; Starlette keeps the parsed JSON on the request
    (``_json``), so this counts it without parsing again. Then the rest of the
    rate-limit tokens are taken: one per recipient, the request's own token
    (``api.auth``) included.
    """
    parsed = getattr(request, "_json", None)  # absent: not JSON, which validation refuses
    if parsed is None:
        return
    emails = parsed if batch and isinstance(parsed, list) else [parsed]
    try:
        recipients = check_request_limits(
            emails, SubmissionLimits.from_settings(svc.settings), batch=batch
        )
    except OverLimit as exc:
        errors = [{"field": exc.field, "message": exc.message}] if exc.field else None
        raise Problem(exc.status, exc.message, errors) from None
    await ratelimit.charge_recipients(request, caller, recipients)


T = TypeVar("T")
_ONE = TypeAdapter(EmailIn)
_MANY = TypeAdapter(Batch)


#: A request body up to this many bytes is validated on the event loop: a typical single
#: send (5 KB) validates in 7.5 us, and the hand-off to a thread and back cost more than
#: that (5.1% of the API process's samples at 200 single sends a second). A 9 MB
#: attachment takes 25 ms, which the loop must not wait for.
VALIDATED_IN_PLACE_BYTES = 64 * 1024


async def validated(adapter: TypeAdapter[T], body: Any, size: int) -> T:
    """Validate a send request's body, of ``size`` bytes, in a worker
    thread unless it is small (``VALIDATED_IN_PLACE_BYTES``).

    The thread holds the GIL while it runs, but validators are Python and the
    interpreter hands the GIL to the loop every switch interval, so the loop keeps
    answering. A refusal is the same 422 FastAPI gives for a body it validates.
    """
    try:
        if size <= VALIDATED_IN_PLACE_BYTES:
            return adapter.validate_python(body)
        return await asyncio.to_thread(adapter.validate_python, body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in errors]
        ) from None


def to_submission(email: EmailIn) -> Submission:
    """The email to accept; a ``template`` it names must have been rendered
    (``render_sends``): the subject is then set."""
    assert email.subject is not None, "a template send is rendered before it is accepted"
    name, address = parse_mailbox(email.from_)
    content = Content(
        from_name=name,
        from_address=address,
        to=email.to,
        cc=email.cc,
        reply_to=email.reply_to,
        subject=email.subject,
        text=email.text,
        html=email.html,
        headers=email.headers,
        attachments=[
            Attachment(a.filename, a.data, a.content_type, a.content_id) for a in email.attachments
        ],
    )
    recipients = (
        [Recipient(a, "to") for a in email.to]
        + [Recipient(a, "cc") for a in email.cc]
        + [Recipient(a, "bcc") for a in email.bcc]
    )
    return Submission(
        content=content,
        recipients=recipients,
        tags=email.tags,
        scheduled_at=email.scheduled_at,
        track_opens=email.track.opens if email.track else None,
        track_clicks=email.track.clicks if email.track else None,
        unsubscribe=email.unsubscribe,
    )


async def _accept(
    svc: Svc,
    caller: Principal,
    emails: list[EmailIn],
    sent: list[Any],
    idempotency_key: str | None,
    shape: Shape,
    endpoint: str,
) -> Response:
    started = time.monotonic()
    rendered = await render_sends(svc, caller, emails, batch=endpoint == "batch")
    submissions = [to_submission(e) for e in rendered]

    def request() -> dict[str, Any]:
        # The endpoint is part of the body: one email and a batch of that one email differ.
        return {
            "endpoint": endpoint,
            "emails": [_fingerprint(e, r) for e, r in zip(emails, sent, strict=True)],
        }

    answered = await accept_once(
        svc, caller, submissions, key=idempotency_key, request=request, shape=shape
    )
    svc.metrics.accept_seconds.observe(time.monotonic() - started)
    return answered


def _fingerprint(email: EmailIn, sent: Any) -> dict[str, Any]:
    """What an Idempotency-Key's request is compared by: the email as validated, so that
    equal requests match however they were spelled, but ``scheduled_at`` as sent: "in 10
    min" names another moment at each retry, and a retry must still be the same request."""
    fields = email.model_dump(mode="json", by_alias=True)
    if isinstance(sent, dict) and isinstance(sent.get("scheduled_at"), str):
        fields["scheduled_at"] = sent["scheduled_at"]
    return fields


@router.post(
    "",
    status_code=202,
    summary="Send an email",
    response_model=answers.EmailAccepted,
    openapi_extra=answers.email_links(202, "/id"),
    responses=_SCOPE,
)
async def send_email(
    request: Request,
    svc: Svc,
    caller: Sender,
    body: Annotated[EmailBody, Body()],
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> Response:
    # Counted in the endpoint, not in a dependency of its own: the body is validated
    # here too (``validated``), and each dependency costs FastAPI's solver on every send.
    await within_limits(request, svc, caller, batch=False)
    email = await validated(_ONE, body, len(await request.body()))
    return await _accept(
        svc, caller, [email], [body], idempotency_key, lambda r: r[0].as_dict(), "email"
    )


@router.post(
    "/batch",
    status_code=202,
    summary="Send up to 500 emails",
    response_model=answers.BatchAccepted,
    openapi_extra=answers.email_links(202, "/data/0/id"),
    responses=_SCOPE,
)
async def send_batch(
    request: Request,
    svc: Svc,
    caller: Sender,
    body: Annotated[BatchBody, Body(title="Emails")],
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> Response:
    await within_limits(request, svc, caller, batch=True)
    emails = await validated(_MANY, body, len(await request.body()))
    return await _accept(
        svc,
        caller,
        emails,
        body,
        idempotency_key,
        lambda rs: {"data": [r.as_dict() for r in rs]},
        "batch",
    )


#: The endpoints ``_SendRoute`` calls straight, with the arguments FastAPI would give.
_STRAIGHT: frozenset[Callable[..., Any]] = frozenset({send_email, send_batch})


@router.get(
    "", summary="The send log, newest first", response_model=answers.EmailList, responses=_SCOPE
)
async def list_emails(
    svc: Svc,
    caller: Reader,
    status: EmailStatus | None = None,
    recipient_status: Annotated[
        RecipientStatus | None,
        Query(description="Only emails with at least one recipient in this status"),
    ] = None,
    recipient: str | None = None,
    from_: Annotated[str | None, Query(alias="from")] = None,
    domain: str | None = None,
    tag: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_.-]{1,64}:.*$")] = None,
    since: Timestamp | None = None,
    until: Timestamp | None = None,
    message_id: Annotated[
        str | None, Query(description="The Message-ID, with or without its angle brackets")
    ] = None,
    source: Annotated[
        EmailSource | None,
        Query(
            description="Only emails of this source. Without it the send log holds the"
            " customer's mail (`api`, `smtp`); `dsn` lists the delivery status"
            " notifications Postline sent, `tlsrpt` its TLS reports, for an unscoped (admin)"
            " key only (403 otherwise)."
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    domain_id = caller.domain_id
    after = page_after(cursor, "em_")
    if source in OWN_SOURCES and not caller.is_admin:
        raise Problem(403, f"source={source}: Postline's own mail needs an unscoped (admin) key")
    for name, moment in (("since", since), ("until", until)):
        if moment is not None and moment.tzinfo is None:
            message = "must include a time zone offset (RFC 3339), e.g. ...Z"
            raise Problem(422, f"{name}: {message}", [{"field": name, "message": message}])
        try:
            # The store keeps UTC: 0001-01-01T00:00+01:00 has no UTC time (found by tests/fuzz).
            _ = moment.astimezone(UTC) if moment is not None else None
        except OverflowError:
            message = "is out of range once converted to UTC"
            errors = [{"field": name, "message": message}]
            raise Problem(422, f"{name}: {message}", errors) from None
    from_address = from_
    if from_ and "@" in from_:
        try:
            from_address = parse_mailbox(from_)[1]
        except ValueError as exc:
            raise Problem(422, f"from: {exc}", [{"field": "from", "message": str(exc)}]) from None
    async with svc.db.read() as conn:
        if domain is not None:
            # The same 403 (or 422) as every route naming a domain the key may not use.
            domain_id = await domain_in_scope(conn, caller, domain)
        where = email_store.EmailFilter(
            status=status,
            recipient_status=recipient_status,
            recipient=recipient,
            from_address=from_address,
            domain_id=domain_id,
            tag=tuple(tag.split(":", 1)) if tag else None,  # type: ignore[arg-type]
            since=since,
            until=until,
            message_id=bracketed(message_id) if message_id is not None else None,
            source=source,
        )
        rows = await email_store.list_emails(conn, where, after, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        to = await email_store.to_addresses(conn, (r.email.id for r in rows))
        complained = await email_store.with_complaints(conn, (r.email.id for r in rows))
    return page(
        [
            email_item(r.email, r.recipient_count, to.get(r.email.id, []), r.email.id in complained)
            for r in rows
        ],
        rows[-1].email.id if more and rows else None,
    )


def bracketed(message_id: str) -> str:
    """A Message-ID as stored, ``<local@domain>``: users copy it with or without brackets."""
    bare = message_id.strip().removeprefix("<").removesuffix(">")
    return f"<{bare}>"


def _may_see(caller: Principal, email: Email) -> bool:
    """A domain's key sees its customer mail; Postline's own mail (DSNs) only an admin key."""
    if not caller.may_see(email.domain_id):
        return False
    return caller.is_admin or is_customer_mail(email)


async def _visible_email(conn: AsyncConnection, caller: Principal, email_id: str) -> Email:
    email = await email_store.get_email(conn, email_id)
    if email is None or not _may_see(caller, email):
        raise Problem(404, f"no email {email_id}")
    return email


async def _detail(conn: AsyncConnection, email: Email) -> dict[str, Any]:
    return email_detail(
        email,
        await email_store.get_recipients(conn, email.id),
        await email_store.get_attempts(conn, email.id),
        await email_store.get_events(conn, email.id),
        await email_store.notifications_about(conn, email.id),
    )


@router.get(
    "/{email_id}",
    summary="One email with its recipients, timelines and events",
    response_model=answers.EmailDetail,
)
async def get_email(svc: Svc, caller: Reader, email_id: str) -> dict[str, Any]:
    async with svc.db.read() as conn:
        email = await _visible_email(conn, caller, email_id)
        return await _detail(conn, email)


#: The raw message as Postline sent it (RFC 5322, with its DKIM signature).
_RAW_MESSAGE = {
    200: {
        "description": "The message, byte for byte as it was (or will be) sent",
        "content": {"message/rfc822": {"schema": {"type": "string", "format": "binary"}}},
    },
    **problem_responses(410),
}


@router.get(
    "/{email_id}/content",
    summary="The raw MIME message, while its body is kept",
    response_class=Response,
    responses=_RAW_MESSAGE,
)
async def get_email_content(
    svc: Svc,
    caller: Reader,
    email_id: str,
    recipient: Annotated[
        str | None,
        Query(
            max_length=320,
            description="The copy sent to this recipient (an address of the email; 404"
            " otherwise). A tracked email to several recipients has one copy each, whose"
            " tracking links name that recipient; without it, the first recipient's.",
        ),
    ] = None,
) -> Response:
    """410 once housekeeping removed the body: after the email became final and
    ``POSTLINE_BODY_RETENTION_SECONDS`` passed (or a crash lost a body nobody needed)."""
    position = 0
    async with svc.db.read() as conn:
        email = await _visible_email(conn, caller, email_id)
        if recipient is not None:
            wanted = recipient.strip().lower()
            found = [
                r.position
                for r in await email_store.get_recipients(conn, email_id)
                if r.address.lower() == wanted
            ]
            if not found:
                raise Problem(404, f"{email_id} has no such recipient")
            position = found[0]
    gone = Problem(410, f"the content of {email_id} is no longer kept (body retention)")
    if email.body_purged_at is not None:
        raise gone
    try:
        body = await svc.spool.get(email.body_ref_of(position))
    except SpoolMissing:
        # Freed between the read above and now, by another process's housekeeping.
        raise gone from None
    return Response(body, media_type="message/rfc822")


@router.post(
    "/{email_id}/cancel",
    summary="Cancel recipients still waiting (scheduled, queued or deferred)",
    response_model=answers.EmailDetail,
    responses=problem_responses(409),
)
async def cancel_email(svc: Svc, caller: Sender, email_id: str) -> dict[str, Any]:
    now = utcnow()
    async with svc.db.write() as conn:
        email = await email_store.lock_email(conn, email_id)
        if email is None or not _may_see(caller, email):
            raise Problem(404, f"no email {email_id}")
        cancelled = 0
        for recipient in await email_store.get_recipients(conn, email_id):
            # Deferred ones too: their retry is not sent (the job leaves the queue, or
            # the worker holding it finds them final). An attempt already under way
            # at this moment still ends as the destination answers it.
            if recipient.status in PENDING_STATUSES:
                cancelled += await apply_outcome(
                    conn,
                    email=email,
                    recipient=recipient,
                    outcome=Outcome(RecipientStatus.CANCELLED, reason="cancelled by the API"),
                    now=now,
                )
        if not cancelled:
            raise Problem(409, "no recipient of this email can still be cancelled")
        await refresh_email_status(conn, email, now)
        refreshed = await email_store.get_email(conn, email_id)
        assert refreshed is not None  # locked above: nobody deleted it since
        detail = await _detail(conn, refreshed)
        done = _finished_destinations(await email_store.get_recipients(conn, email_id))
        if svc.queue.shares_store:
            await svc.queue.discard(email_id, done, conn)
    if not svc.queue.shares_store:
        await _discard_after_commit(svc, email_id, done)
    svc.metrics.recipient_outcomes.labels(status=str(RecipientStatus.CANCELLED)).inc(cancelled)
    return detail


@router.post(
    "/{email_id}/retry",
    summary="Attempt the deferred recipients now",
    response_model=answers.EmailDetail,
    responses=problem_responses(409),
)
async def retry_email(svc: Svc, caller: Sender, email_id: str) -> dict[str, Any]:
    """The deferred recipients' jobs come due now instead of at their next attempt
    (the backoff count stays: a retry that fails again waits as the schedule says).
    409 when no recipient is deferred, or when a worker holds one of their jobs at
    this moment: it is being attempted (or its outcome recorded) already."""
    now = utcnow()
    async with svc.db.write() as conn:
        email = await email_store.lock_email(conn, email_id)
        if email is None or not _may_see(caller, email):
            raise Problem(404, f"no email {email_id}")
        recipients = await email_store.get_recipients(conn, email_id)
        deferred = [r for r in recipients if r.status == RecipientStatus.DEFERRED]
        if not deferred:
            raise Problem(409, "no recipient of this email is deferred")
        destinations = {r.destination for r in deferred}
        waiting = [
            r
            for r in recipients
            if r.destination in destinations
            and r.status in (RecipientStatus.QUEUED, RecipientStatus.DEFERRED)
        ]
        jobs = _scheduled_jobs(email, waiting, now)
        await email_store.set_next_attempt(conn, [r.id for r in deferred], now, now)
        # As a reschedule moves jobs: Redis's leave before the commit, and housekeeping
        # rebuilds any that a failure half way leaves missing.
        shared = conn if svc.queue.shares_store else None
        moved = await svc.queue.discard(email_id, sorted(destinations), shared)
        if moved < len(destinations):
            raise Problem(409, "an attempt of this email is under way; retry once it is recorded")
        if shared is not None:
            await svc.queue.enqueue(jobs, shared)
        detail = await _detail(conn, email)
    if shared is None:
        await svc.acceptor.enqueue_after_commit(jobs)
    svc.acceptor.wakeups.work_arrived()
    log.info("retrying email_id=%s deferred=%d now", email_id, len(deferred))
    return detail


@router.patch(
    "/{email_id}",
    summary="Reschedule a scheduled email",
    response_model=answers.EmailDetail,
    responses=problem_responses(409),
)
async def reschedule_email(
    svc: Svc, caller: Sender, email_id: str, body: RescheduleIn
) -> dict[str, Any]:
    """Move the recipients still scheduled to ``scheduled_at``; a time already past sends
    them now. 409 once none is scheduled (sent, being sent, or cancelled)."""
    if body.id is not None and body.id != email_id:
        message = f"is {body.id}, not the email of the path ({email_id})"
        raise Problem(422, f"id: {message}", [{"field": "id", "message": message}])
    now = utcnow()
    try:
        when = max(body.scheduled_at.astimezone(UTC), now)
    except OverflowError:
        when = now + MAX_SCHEDULE_AHEAD * 2  # 9999-12-31T23:59-01:00: refused just below
    if when > now + MAX_SCHEDULE_AHEAD:
        message = "must be at most 30 days ahead"
        errors = [{"field": "scheduled_at", "message": message}]
        raise Problem(422, f"scheduled_at: {message}", errors)
    async with svc.db.write() as conn:
        email = await email_store.lock_email(conn, email_id)
        if email is None or not _may_see(caller, email):
            raise Problem(404, f"no email {email_id}")
        waiting = [
            r
            for r in await email_store.get_recipients(conn, email_id)
            if r.status == RecipientStatus.SCHEDULED and r.attempts == 0
        ]
        if not waiting:
            raise Problem(409, "no recipient of this email is still scheduled")
        await email_store.set_scheduled_at(conn, email_id, when, now)
        jobs = _scheduled_jobs(email, waiting, when)
        # A job under a lease came due and a worker holds it: too late to move. Redis's
        # jobs leave before the commit, so that none is ever due at the old time after it;
        # if this fails half way, housekeeping rebuilds the missing ones from the database.
        shared = conn if svc.queue.shares_store else None
        moved = await svc.queue.discard(email_id, [job.destination for job in jobs], shared)
        if moved < len(jobs):
            raise Problem(409, "delivery of this email has started; it cannot be rescheduled")
        if shared is not None:
            await svc.queue.enqueue(jobs, shared)
        moved_email = await email_store.get_email(conn, email_id)
        assert moved_email is not None  # locked above: nobody deleted it since
        detail = await _detail(conn, moved_email)
    if shared is None:
        await svc.acceptor.enqueue_after_commit(jobs)
        svc.acceptor.wakeups.work_arrived()
    log.info("rescheduled email_id=%s to %s", email_id, when.isoformat())
    return detail


def _scheduled_jobs(email: Email, waiting: list[EmailRecipient], due: datetime) -> list[Job]:
    """One job per destination for the recipients still waiting, due at ``due``; its
    attempt count is theirs, so that a retry's backoff goes on where it was."""
    by_destination: dict[str, list[EmailRecipient]] = {}
    for recipient in waiting:
        by_destination.setdefault(recipient.destination, []).append(recipient)
    return [
        Job(
            id=new_id("job_"),
            email_id=email.id,
            destination=destination,
            recipient_ids=[r.id for r in group],
            body_ref=email.body_ref,
            due_at=due,
            attempt=max(r.attempts for r in group),
        )
        for destination, group in sorted(by_destination.items())
    ]


def _finished_destinations(recipients: list[EmailRecipient]) -> list[str]:
    """The destinations none of whose recipients waits any more: their jobs have
    nothing left to send, so they leave the queue now rather than when due."""
    waiting = {r.destination for r in recipients if r.status in PENDING_STATUSES}
    return sorted({r.destination for r in recipients} - waiting)


async def _discard_after_commit(svc: Services, email_id: str, destinations: list[str]) -> None:
    """A queue apart from the store (Redis) loses the jobs once the cancel is committed.
    If it does not answer, they stay until due: a worker then finds nothing to send."""
    try:
        await svc.queue.discard(email_id, destinations)
    except Exception as exc:
        log.warning(
            "cancelled email_id=%s: its jobs stay queued until due: %s",
            email_id,
            type(exc).__name__,
        )
