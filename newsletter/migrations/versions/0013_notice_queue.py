"""notices: the durable queue of one-off subscription messages (confirm, welcome, already, goodbye), written
in the same transaction as the subscriber change and sent with retries (newsletter.notice_queue)

Revision ID: 0013_notice_queue
Revises: 0012_deferred_article_text
Create Date: 2026-12-01 13:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from newsletter.models import UTCDateTime

revision = "0013_notice_queue"
down_revision = "0012_deferred_article_text"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "notices",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("subscriber_id", sa.Integer(), nullable=True),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("lang", sa.String(length=16), nullable=False),
        sa.Column("context", sa.JSON(), nullable=False),
        sa.Column(
            "status",
            sa.Enum("queued", "sending", "sent", "failed", "skipped", name="noticestatus", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=True),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("claimed_until", UTCDateTime(), nullable=True),
        sa.Column("claim_token", sa.String(length=32), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_smtp_code", sa.Integer(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("sent_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["subscriber_id"], ["subscribers.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_notices_status_next", "notices", ["status", "next_attempt_at"], unique=False)
    op.create_index(op.f("ix_notices_subscriber_id"), "notices", ["subscriber_id"], unique=False)


def downgrade() -> None:
    # Notices still queued are lost: send them first (`newsletter notices list` shows them).
    op.drop_index(op.f("ix_notices_subscriber_id"), table_name="notices")
    op.drop_index("ix_notices_status_next", table_name="notices")
    op.drop_table("notices")
