"""bounce rule: the classification rule that decided a recipient's bounce type

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 21:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("email_recipients") as batch:
        batch.add_column(sa.Column("bounce_rule", sa.String(length=64), nullable=True))
    with op.batch_alter_table("delivery_attempts") as batch:
        batch.add_column(sa.Column("bounce_rule", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("delivery_attempts") as batch:
        batch.drop_column("bounce_rule")
    with op.batch_alter_table("email_recipients") as batch:
        batch.drop_column("bounce_rule")
