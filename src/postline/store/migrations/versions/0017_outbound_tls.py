"""outbound TLS: each attempt's TLS on its timeline row; MTA-STS policies; TLS report counts

delivery_attempts gains the TLS of each attempt (version, policy applied,
certificate verified); mta_sts_policies keeps each destination's MTA-STS policy
for its max_age, shared by every worker; tls_report_counts counts the sessions
under a policy per day, for the daily TLS reports (RFC 8460).

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06 06:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("delivery_attempts") as batch:
        batch.add_column(sa.Column("tls_version", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("tls_policy", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("tls_verified", sa.Boolean(), nullable=True))
    op.create_table(
        "mta_sts_policies",
        sa.Column("domain", sa.String(length=253), nullable=False),
        sa.Column("policy_id", sa.String(length=32), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("mx", sa.Text(), nullable=False),
        sa.Column("max_age", sa.Integer(), nullable=False),
        sa.Column("fetched_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("domain", name=op.f("pk_mta_sts_policies")),
    )
    op.create_table(
        "tls_report_counts",
        sa.Column("day", sa.String(length=10), nullable=False),
        sa.Column("domain", sa.String(length=253), nullable=False),
        sa.Column("policy_type", sa.String(length=16), nullable=False),
        sa.Column("result", sa.String(length=40), nullable=False),
        sa.Column("mx_host", sa.String(length=253), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint(
            "day", "domain", "policy_type", "result", "mx_host", name=op.f("pk_tls_report_counts")
        ),
    )


def downgrade() -> None:
    op.drop_table("tls_report_counts")
    op.drop_table("mta_sts_policies")
    with op.batch_alter_table("delivery_attempts") as batch:
        batch.drop_column("tls_verified")
        batch.drop_column("tls_policy")
        batch.drop_column("tls_version")
