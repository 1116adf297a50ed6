"""related_index: persisted term vectors per article; related_articles.source_article_id: a block per article

Revision ID: 0007_related_index
Revises: 0008_rendering
Create Date: 2026-12-01 04:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import newsletter.models

revision = "0007_related_index"
down_revision = "0008_rendering"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "related_index",
        sa.Column("article_id", sa.Integer(), nullable=False),
        sa.Column("group", sa.String(length=16), nullable=False),
        sa.Column("published_at", newsletter.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("category", sa.String(length=128), nullable=True),
        sa.Column("title_terms", sa.LargeBinary(), nullable=False),
        sa.Column("body_terms", sa.LargeBinary(), nullable=False),
        sa.Column("text_hash", sa.String(length=64), nullable=False),
        sa.Column("indexed_at", newsletter.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["article_id"], ["articles.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("article_id"),
    )
    with op.batch_alter_table("related_index", schema=None) as batch_op:
        batch_op.create_index("ix_related_index_group_published", ["group", "published_at"], unique=False)
    # Rows written before this keep a NULL source (one block per edition) and are no longer shown.
    with op.batch_alter_table("related_articles", schema=None) as batch_op:
        batch_op.add_column(sa.Column("source_article_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key("fk_related_articles_source_article_id", "articles", ["source_article_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("related_articles", schema=None) as batch_op:
        batch_op.drop_constraint("fk_related_articles_source_article_id", type_="foreignkey")
        batch_op.drop_column("source_article_id")
    with op.batch_alter_table("related_index", schema=None) as batch_op:
        batch_op.drop_index("ix_related_index_group_published")
    op.drop_table("related_index")
