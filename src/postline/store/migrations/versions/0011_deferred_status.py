"""deferred status: emails waiting for a retry read "deferred"; bounce_type on bounces only

Until this version an email some recipient of which waited for a retry read
"sending", and a deferred (or expired) recipient carried the class of its last
failure as its ``bounce_type``. Now:

* such an email reads "deferred" (``model.derive_email_status``): stored statuses
  are brought in line here, as they are only derived again when a recipient moves;
* a recipient's ``bounce_type`` is set only when it bounced; the class of every
  failed attempt goes in its timeline row (``delivery_attempts.bounce_type``).
  The class a non-bounced recipient carried is moved to its latest timeline row,
  which is the attempt it came from;
* the send log's ``recipient_status`` filter gets an index on (status, email_id).

Downgrading puts back the "sending" status, and the classes on the recipients
that had one in their latest timeline row.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 00:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("delivery_attempts") as batch:
        batch.add_column(sa.Column("bounce_type", sa.String(length=16), nullable=True))
    op.create_index(
        "ix_email_recipients_status_email_id", "email_recipients", ["status", "email_id"]
    )
    op.execute(
        "UPDATE delivery_attempts SET bounce_type = ("
        " SELECT r.bounce_type FROM email_recipients r"
        " WHERE r.id = delivery_attempts.recipient_id)"
        # The latest timeline row of each recipient (ids are in write order).
        " WHERE delivery_attempts.id IN ("
        " SELECT max(a.id) FROM delivery_attempts a GROUP BY a.recipient_id)"
    )
    op.execute(
        "UPDATE email_recipients SET bounce_type = NULL"
        " WHERE status <> 'bounced' AND bounce_type IS NOT NULL"
    )
    op.execute(
        "UPDATE sent_emails SET status = 'deferred' WHERE status = 'sending' AND EXISTS ("
        " SELECT 1 FROM email_recipients r"
        " WHERE r.email_id = sent_emails.id AND r.status = 'deferred')"
    )


def downgrade() -> None:
    op.execute("UPDATE sent_emails SET status = 'sending' WHERE status = 'deferred'")
    op.execute(
        "UPDATE email_recipients SET bounce_type = ("
        " SELECT a.bounce_type FROM delivery_attempts a"
        " WHERE a.recipient_id = email_recipients.id ORDER BY a.id DESC LIMIT 1)"
        " WHERE bounce_type IS NULL"
    )
    op.drop_index("ix_email_recipients_status_email_id", table_name="email_recipients")
    with op.batch_alter_table("delivery_attempts") as batch:
        batch.drop_column("bounce_type")
