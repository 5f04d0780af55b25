"""tracking_host: a domain's own host name for tracked links and the open pixel

A CNAME under the domain (``track.example.com``) pointing at Postline's tracking
address; NULL: the domain's links use POSTLINE_TRACKING_URL. Unique, so a host names
one domain even where one sending domain is a subdomain of another.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-06 09:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


# Plain ALTER TABLE and CREATE INDEX, no batch: a batch on SQLite would copy and drop
# ``domains``, which other tables' keys reference (as 0018).
def upgrade() -> None:
    op.add_column("domains", sa.Column("tracking_host", sa.String(253), nullable=True))
    op.create_index("ix_domains_tracking_host", "domains", ["tracking_host"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_domains_tracking_host", table_name="domains")
    op.drop_column("domains", "tracking_host")
