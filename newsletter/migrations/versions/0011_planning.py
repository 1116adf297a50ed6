"""articles.source_hash: the SHA-256 of the corpus line an article was imported from, so re-importing an
unchanged line skips its conversion (Markdown, sanitising, summary, related index)

Revision ID: 0011_planning
Revises: 0009_subscriptions
Create Date: 2026-12-01 07:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_planning"
down_revision = "0009_subscriptions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # recreate="never": ALTER TABLE ADD COLUMN in place; rebuilding `articles` would trip the foreign keys on it.
    with op.batch_alter_table("articles", schema=None, recreate="never") as batch_op:
        batch_op.add_column(sa.Column("source_hash", sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f("ix_articles_source_hash"), ["source_hash"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("articles", schema=None, recreate="never") as batch_op:
        batch_op.drop_index(batch_op.f("ix_articles_source_hash"))
        batch_op.drop_column("source_hash")
