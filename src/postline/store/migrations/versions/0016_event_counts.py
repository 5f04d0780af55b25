"""event_counts: per domain, hour and event name, for GET /v1/stats

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06 07:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "event_counts",
        sa.Column("domain_id", sa.String(length=32), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("name", sa.String(length=40), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("domain_id", "hour", "name", name=op.f("pk_event_counts")),
    )


def downgrade() -> None:
    op.drop_table("event_counts")
