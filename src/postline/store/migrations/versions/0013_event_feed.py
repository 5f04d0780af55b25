"""event feed: a position per event, handed out after it committed (GET /v1/events)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 06:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A nullable column and an index: no table rebuild on SQLite, however many events.
    op.add_column("events", sa.Column("feed_position", sa.BigInteger(), nullable=True))
    op.create_index(op.f("ix_events_feed_position"), "events", ["feed_position"], unique=True)
    op.create_table(
        "event_feed",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("last_position", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event_feed")),
    )
    op.execute("INSERT INTO event_feed (id, last_position) VALUES (1, 0)")


def downgrade() -> None:
    op.drop_table("event_feed")
    op.drop_index(op.f("ix_events_feed_position"), table_name="events")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("feed_position")
