"""inbound_unmatched: reports the inbound listener could not parse or match

Late bounces and complaints come back to the return path (postline.inbound); those
that cannot be applied are kept here with the reason, for GET /v1/inbound.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 03:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "inbound_unmatched",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("mail_from", sa.String(length=320), nullable=False),
        sa.Column("rcpt_to", sa.String(length=320), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=True),
        sa.Column("shape", sa.String(length=16), nullable=True),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.Column("email_id", sa.String(length=32), nullable=True),
        sa.Column("subject", sa.String(length=1000), nullable=True),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("excerpt", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inbound_unmatched")),
    )


def downgrade() -> None:
    op.drop_table("inbound_unmatched")
