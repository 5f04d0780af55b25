"""queue jobs by destination: the embedded queue leases each destination's earliest jobs in turn

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 14:10:00
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_queue_jobs_destination_due_at", "queue_jobs", ["destination", "due_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_queue_jobs_destination_due_at", table_name="queue_jobs")
