"""recipient_bodies: how many bodies an email has in the spool (one per recipient when tracked)

A tracked email with several recipients is built once per recipient, so that each
copy's tokens name its own recipient (postline.tracking). ``bodies`` says how many
copies the spool holds: 1 (every email before this, and every untracked one) is one
body under ``body_ref`` for all recipients; n > 1 is one per recipient position, the
first under ``body_ref`` itself (``postline.spool.base.copy_refs``).

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-06 09:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


# Plain ALTER TABLE, no batch: SQLite adds a NOT NULL column with a constant default in
# place, and a batch would copy and drop ``sent_emails``, which other tables' keys reference.
def upgrade() -> None:
    op.add_column(
        "sent_emails",
        sa.Column("bodies", sa.Integer(), nullable=False, server_default=sa.text("1")),
    )


def downgrade() -> None:
    op.drop_column("sent_emails", "bodies")
