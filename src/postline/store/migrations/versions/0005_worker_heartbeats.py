"""worker heartbeats: a killed worker's jobs are free again in seconds, not at lease expiry

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 21:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "worker_heartbeats",
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("alive_until", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("owner", name=op.f("pk_worker_heartbeats")),
    )
    with op.batch_alter_table("queue_jobs", schema=None) as batch_op:
        batch_op.create_index("ix_queue_jobs_lease_owner", ["lease_owner"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("queue_jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_queue_jobs_lease_owner")
    op.drop_table("worker_heartbeats")
