"""inbound routes: addresses the inbound listener takes mail for, and that mail

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-06 07:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "inbound_routes",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("domain_id", sa.String(length=32), nullable=False),
        sa.Column("match", sa.String(length=320), nullable=False),
        sa.Column("events", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["domain_id"],
            ["domains.id"],
            name=op.f("fk_inbound_routes_domain_id_domains"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inbound_routes")),
        sa.UniqueConstraint("match", name=op.f("uq_inbound_routes_match")),
    )
    op.create_index(
        op.f("ix_inbound_routes_domain_id"), "inbound_routes", ["domain_id"], unique=False
    )
    op.create_table(
        "inbound_messages",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("route_id", sa.String(length=32), nullable=True),
        sa.Column("domain_id", sa.String(length=32), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("mail_from", sa.String(length=320), nullable=False),
        sa.Column("rcpt_to", sa.String(length=320), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["domain_id"],
            ["domains.id"],
            name=op.f("fk_inbound_messages_domain_id_domains"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inbound_messages")),
    )
    op.create_index(
        op.f("ix_inbound_messages_domain_id"), "inbound_messages", ["domain_id"], unique=False
    )
    op.create_index(
        op.f("ix_inbound_messages_received_at"),
        "inbound_messages",
        ["received_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_table("inbound_messages")
    op.drop_table("inbound_routes")
