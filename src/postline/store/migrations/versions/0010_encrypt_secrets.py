"""encrypt secrets: room for sealed webhook secrets, and the secret key's check row

The sealing of rows written in the clear before this version is not done here:
the key is not part of the schema's history (``alembic upgrade`` run by hand has
none), and rows an older process writes during a rolling upgrade arrive after any
migration. Every ``postline`` command seals them instead, right after migrating
(postline.secrets), idempotently.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05 21:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("webhooks") as batch:
        batch.alter_column("secret", type_=sa.Text(), existing_nullable=False)
        batch.alter_column("previous_secret", type_=sa.Text(), existing_nullable=True)
    op.create_table(
        "secret_check",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("token", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_secret_check")),
    )


def downgrade() -> None:
    # Sealed secrets do not fit the old columns: open them first (with the key) or
    # expect PostgreSQL to refuse the narrowing.
    op.drop_table("secret_check")
    with op.batch_alter_table("webhooks") as batch:
        batch.alter_column("previous_secret", type_=sa.String(length=100), existing_nullable=True)
        batch.alter_column("secret", type_=sa.String(length=100), existing_nullable=False)
