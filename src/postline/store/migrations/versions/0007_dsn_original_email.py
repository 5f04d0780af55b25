"""dsn original email: a DSN names the email it reports on, so its detail can show it

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 21:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sent_emails", schema=None) as batch_op:
        batch_op.add_column(sa.Column("original_email_id", sa.String(length=32), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_sent_emails_original_email_id"), ["original_email_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("sent_emails", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sent_emails_original_email_id"))
        batch_op.drop_column("original_email_id")
