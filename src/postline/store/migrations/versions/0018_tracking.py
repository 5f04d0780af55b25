"""tracking: a domain's defaults for open and click tracking (off unless asked)

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06 07:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


# Plain ALTER TABLE, no batch: SQLite adds a NOT NULL column with a constant default in
# place, and a batch would copy and drop ``domains``, which other tables' keys reference.
def upgrade() -> None:
    for name in ("track_opens", "track_clicks"):
        op.add_column(
            "domains", sa.Column(name, sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    for name in ("track_clicks", "track_opens"):
        op.drop_column("domains", name)
