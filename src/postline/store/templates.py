"""Named queries for email templates and their versions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from postline.store.records import Record
from postline.store.schema import domains, template_versions, templates


@dataclass(frozen=True, slots=True)
class TemplateVersion(Record):
    """One version of a template, with the template's name and scope."""

    id: str
    domain_id: str | None
    domain_name: str | None
    name: str
    latest_version: int
    version: int
    subject: str
    html: str | None
    text: str | None
    created_at: datetime
    updated_at: datetime
    version_created_at: datetime


_VERSIONS = select(
    templates.c.id,
    templates.c.domain_id,
    domains.c.name.label("domain_name"),
    templates.c.name,
    templates.c.latest_version,
    template_versions.c.version,
    template_versions.c.subject,
    template_versions.c.html,
    template_versions.c.text,
    templates.c.created_at,
    templates.c.updated_at,
    template_versions.c.created_at.label("version_created_at"),
).select_from(
    templates.join(template_versions, template_versions.c.template_id == templates.c.id).outerjoin(
        domains, domains.c.id == templates.c.domain_id
    )
)


async def create(
    conn: AsyncConnection,
    *,
    template_id: str,
    domain_id: str | None,
    name: str,
    subject: str,
    html: str | None,
    text: str | None,
    now: datetime,
) -> None:
    await conn.execute(
        insert(templates).values(
            id=template_id,
            domain_id=domain_id,
            name=name,
            latest_version=1,
            created_at=now,
            updated_at=now,
        )
    )
    await _add_version(conn, template_id, 1, subject, html, text, now)


async def add_version(
    conn: AsyncConnection,
    template_id: str,
    *,
    name: str | None,
    subject: str,
    html: str | None,
    text: str | None,
    now: datetime,
) -> int | None:
    """Make the next version the latest; its number, or None if the template is gone.

    The version number is taken by an UPDATE of the template row, which locks it, so
    two concurrent edits get 2 and 3, never 2 twice.
    """
    values: dict[str, object] = {
        "latest_version": templates.c.latest_version + 1,
        "updated_at": now,
    }
    if name is not None:
        values["name"] = name
    bumped = await conn.execute(
        update(templates)
        .where(templates.c.id == template_id)
        .values(**values)
        .returning(templates.c.latest_version)
    )
    version = bumped.scalar_one_or_none()
    if version is None:
        return None
    await _add_version(conn, template_id, version, subject, html, text, now)
    return int(version)


async def _add_version(
    conn: AsyncConnection,
    template_id: str,
    version: int,
    subject: str,
    html: str | None,
    text: str | None,
    now: datetime,
) -> None:
    await conn.execute(
        insert(template_versions).values(
            template_id=template_id,
            version=version,
            subject=subject,
            html=html,
            text=text,
            created_at=now,
        )
    )


async def get(
    conn: AsyncConnection, template_id: str, version: int | None = None
) -> TemplateVersion | None:
    """The template at ``version``, or at its latest when None."""
    wanted = template_versions.c.version == (
        version if version is not None else templates.c.latest_version
    )
    statement = _VERSIONS.where(templates.c.id == template_id, wanted)
    return TemplateVersion.from_optional((await conn.execute(statement)).first())


async def list_latest(
    conn: AsyncConnection, domain_id: str | None, after: str | None, limit: int
) -> list[TemplateVersion]:
    """Templates at their latest version, newest first; one domain's when given."""
    statement = _VERSIONS.where(template_versions.c.version == templates.c.latest_version)
    if domain_id is not None:
        statement = statement.where(templates.c.domain_id == domain_id)
    if after is not None:
        statement = statement.where(templates.c.id < after)
    statement = statement.order_by(templates.c.id.desc()).limit(limit)
    return [TemplateVersion.from_row(row) for row in await conn.execute(statement)]


async def delete_template(conn: AsyncConnection, template_id: str) -> None:
    await conn.execute(
        delete(template_versions).where(template_versions.c.template_id == template_id)
    )
    await conn.execute(delete(templates).where(templates.c.id == template_id))
