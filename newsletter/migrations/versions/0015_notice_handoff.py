"""notices.enqueued_at: when a notice was last handed to the broker, so that beat does not enqueue the same due
notice again at every sweep while the workers are busy (only the claim kept it from going out twice)

Revision ID: 0015_notice_handoff
Revises: 0014_article_text_lz4
Create Date: 2026-12-01 16:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from newsletter.models import UTCDateTime

revision = "0015_notice_handoff"
down_revision = "0014_article_text_lz4"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("notices") as batch_op:
        batch_op.add_column(sa.Column("enqueued_at", UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("notices") as batch_op:
        batch_op.drop_column("enqueued_at")
