"""delivery_attempts: the TLS of each attempt (version, policy applied, certificate verified)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 06:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("delivery_attempts") as batch:
        batch.add_column(sa.Column("tls_version", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("tls_policy", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("tls_verified", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("delivery_attempts") as batch:
        batch.drop_column("tls_verified")
        batch.drop_column("tls_policy")
        batch.drop_column("tls_version")
