"""body retention: when a final email's body left the spool, and indexes for the sweeps

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 21:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A nullable column without a default: a plain ADD COLUMN on SQLite too, no table copy.
    op.add_column("sent_emails", sa.Column("body_purged_at", sa.DateTime(timezone=True)))
    op.create_index(
        "ix_sent_emails_body_purged_at_status_updated_at",
        "sent_emails",
        ["body_purged_at", "status", "updated_at"],
    )
    op.create_index("ix_sent_emails_status_updated_at", "sent_emails", ["status", "updated_at"])


def downgrade() -> None:
    op.drop_index("ix_sent_emails_status_updated_at", table_name="sent_emails")
    op.drop_index("ix_sent_emails_body_purged_at_status_updated_at", table_name="sent_emails")
    with op.batch_alter_table("sent_emails") as batch:
        batch.drop_column("body_purged_at")
