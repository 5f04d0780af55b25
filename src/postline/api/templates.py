"""/v1/templates: named email templates, their versions, and a preview.

Scoped like domains: a key scoped to a domain makes and sees that domain's
templates; an admin key sees all, and its templates without a domain are its own.
Editing makes a new version and keeps the old ones readable, so a send that names
a version renders what that version said.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy.ext.asyncio import AsyncConnection

from postline.api import answers
from postline.api.auth import Caller, Svc, domain_in_scope
from postline.api.cursors import page_after
from postline.api.problems import Problem
from postline.api.responses import problem_responses
from postline.api.schemas import MAX_VERSION, EmailIn
from postline.api.views import keyset_page, rfc3339
from postline.app import Services
from postline.ids import new_id
from postline.keys import Principal
from postline.store import templates as template_store
from postline.store.templates import TemplateVersion
from postline.store.types import utcnow
from postline.templates import Parts, Renderer, TemplateProblem

router = APIRouter(prefix="/v1/templates", tags=["templates"])

#: Most characters of one template part (subject, html or text) as written.
MAX_TEMPLATE_CHARS = 512 * 1024


class TemplateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    subject: str = Field(min_length=1, max_length=4000)
    html: str | None = Field(default=None, max_length=MAX_TEMPLATE_CHARS)
    text: str | None = Field(default=None, max_length=MAX_TEMPLATE_CHARS)
    domain: str | None = Field(default=None, max_length=253)

    @model_validator(mode="after")
    def _some_body(self) -> TemplateIn:
        if self.html is None and self.text is None:
            raise ValueError("give 'text' or 'html' (or both)")
        return self

    @property
    def parts(self) -> Parts:
        return Parts(self.subject, self.html, self.text)


class TemplateEdit(TemplateIn):
    """``PUT``: the whole new version; ``name`` may stay out (it stays as it was)."""

    name: str = Field(default="", max_length=200)
    domain: None = Field(default=None, description="A template keeps its domain")


class RenderIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    variables: dict[str, Any] = Field(default_factory=dict)
    version: int | None = Field(default=None, ge=1, le=MAX_VERSION)


def view(row: TemplateVersion) -> dict[str, Any]:
    return {
        "object": "template",
        "id": row.id,
        "name": row.name,
        "domain": row.domain_name,
        "version": row.version,
        "latest_version": row.latest_version,
        "subject": row.subject,
        "html": row.html,
        "text": row.text,
        "created_at": rfc3339(row.created_at),
        "updated_at": rfc3339(row.updated_at),
        "version_created_at": rfc3339(row.version_created_at),
    }


def template_problem(exc: TemplateProblem, prefix: str = "") -> Problem:
    """A 422 naming the part or the variable at fault."""
    field = f"{prefix}{exc.field}"
    return Problem(422, f"{field}: {exc.message}", [{"field": field, "message": exc.message}])


async def visible(
    conn: AsyncConnection, caller: Principal, template_id: str, version: int | None = None
) -> TemplateVersion:
    """The template (at ``version``, else its latest) if this key may see it, else 404."""
    row = await template_store.get(conn, template_id, version)
    if row is None:
        latest = await template_store.get(conn, template_id) if version is not None else None
        if latest is not None and _may_see(caller, latest):
            raise Problem(404, f"template {template_id} has no version {version}")
        raise Problem(404, f"no template {template_id}")
    if not _may_see(caller, row):
        raise Problem(404, f"no template {template_id}")
    return row


def _may_see(caller: Principal, row: TemplateVersion) -> bool:
    return caller.is_admin if row.domain_id is None else caller.may_see(row.domain_id)


def _check(renderer: Renderer, body: TemplateIn) -> None:
    try:
        renderer.check(body.parts)
    except TemplateProblem as exc:
        raise template_problem(exc) from None


@router.post(
    "",
    status_code=201,
    summary="Create a template",
    response_model=answers.Template,
    responses=problem_responses(403, 422),
)
async def create_template(svc: Svc, caller: Caller, body: TemplateIn) -> dict[str, Any]:
    _check(svc.templates, body)
    template_id = new_id("tpl_")
    async with svc.db.write() as conn:
        if body.domain is not None:
            domain_id: str | None = await domain_in_scope(conn, caller, body.domain)
        else:
            domain_id = caller.domain_id
        await template_store.create(
            conn,
            template_id=template_id,
            domain_id=domain_id,
            name=body.name,
            subject=body.subject,
            html=body.html,
            text=body.text,
            now=utcnow(),
        )
        return view(await visible(conn, caller, template_id))


@router.get(
    "", summary="The templates, at their latest versions", response_model=answers.TemplateList
)
async def list_templates(
    svc: Svc,
    caller: Caller,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    after = page_after(cursor, "tpl_")
    async with svc.db.read() as conn:
        rows = await template_store.list_latest(conn, caller.domain_id, after, limit + 1)
    return keyset_page(rows, limit, view)


@router.get(
    "/{template_id}", summary="A template at its latest version", response_model=answers.Template
)
async def get_template(svc: Svc, caller: Caller, template_id: str) -> dict[str, Any]:
    async with svc.db.read() as conn:
        return view(await visible(conn, caller, template_id))


@router.get(
    "/{template_id}/versions/{version}",
    summary="One version of a template",
    response_model=answers.Template,
    responses=problem_responses(422),  # a version that is not a number
)
async def get_version(
    svc: Svc, caller: Caller, template_id: str, version: Annotated[int, Path(ge=1, le=MAX_VERSION)]
) -> dict[str, Any]:
    async with svc.db.read() as conn:
        return view(await visible(conn, caller, template_id, version))


@router.put(
    "/{template_id}",
    summary="Make a new version of a template",
    response_model=answers.Template,
    responses=problem_responses(422),
)
async def edit_template(
    svc: Svc, caller: Caller, template_id: str, body: TemplateEdit
) -> dict[str, Any]:
    _check(svc.templates, body)
    async with svc.db.write() as conn:
        await visible(conn, caller, template_id)
        version = await template_store.add_version(
            conn,
            template_id,
            name=body.name or None,
            subject=body.subject,
            html=body.html,
            text=body.text,
            now=utcnow(),
        )
        if version is None:
            raise Problem(404, f"no template {template_id}")
        return view(await visible(conn, caller, template_id, version))


@router.delete("/{template_id}", status_code=204, summary="Delete a template and its versions")
async def delete_template(svc: Svc, caller: Caller, template_id: str) -> Response:
    async with svc.db.write() as conn:
        await visible(conn, caller, template_id)
        await template_store.delete_template(conn, template_id)
    return Response(status_code=204)


@router.post(
    "/{template_id}/render",
    summary="Render a template with variables, without sending",
    response_model=answers.Rendered,
    responses=problem_responses(422),
)
async def render_template(
    svc: Svc, caller: Caller, template_id: str, body: RenderIn
) -> dict[str, Any]:
    async with svc.db.read() as conn:
        row = await visible(conn, caller, template_id, body.version)
    try:
        parts = Parts(row.subject, row.html, row.text)
        rendered = await asyncio.to_thread(svc.templates.render, parts, body.variables)
    except TemplateProblem as exc:
        raise template_problem(exc) from None
    return {
        "object": "rendered_template",
        "id": row.id,
        "version": row.version,
        "subject": rendered.subject,
        "html": rendered.html,
        "text": rendered.text,
    }


async def render_sends(
    svc: Services, caller: Principal, emails: list[EmailIn], *, batch: bool
) -> list[EmailIn]:
    """The emails with each ``template`` rendered into subject, html and text.

    Each template named is read once per request, so a batch sharing one renders
    500 emails from one read; rendering runs in a thread, off the event loop. A
    template this key cannot see, or a variable it lacks, is a 422 naming the field.
    """
    refs = {(e.template.id, e.template.version) for e in emails if e.template is not None}
    if not refs:
        return emails
    found: dict[tuple[str, int | None], TemplateVersion] = {}
    async with svc.db.read() as conn:
        for template_id, version in refs:
            try:
                found[(template_id, version)] = await visible(conn, caller, template_id, version)
            except Problem as exc:
                field = "template.version" if "has no version" in exc.detail else "template.id"
                raise Problem(422, exc.detail, [{"field": field, "message": exc.detail}]) from None

    def render_all() -> list[EmailIn]:
        rendered: list[EmailIn] = []
        for index, email in enumerate(emails):
            if email.template is None:
                rendered.append(email)
                continue
            row = found[(email.template.id, email.template.version)]
            try:
                parts = svc.templates.render(
                    Parts(row.subject, row.html, row.text), email.template.variables
                )
            except TemplateProblem as exc:
                prefix = f"[{index}].template." if batch else "template."
                raise template_problem(exc, prefix) from None
            update = {"subject": parts.subject, "html": parts.html, "text": parts.text}
            rendered.append(email.model_copy(update=update))
        return rendered

    return await asyncio.to_thread(render_all)
