"""articles.body_markdown and articles.text_pending: an import stores the Markdown source and leaves the HTML
of a Markdown body and a missing summary to be made on first use (newsletter.article_text)

Revision ID: 0012_deferred_article_text
Revises: 0011_planning
Create Date: 2026-12-01 10:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012_deferred_article_text"
down_revision = "0011_planning"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # recreate="never": ALTER TABLE ADD COLUMN in place; rebuilding `articles` would trip the foreign keys on it.
    with op.batch_alter_table("articles", schema=None, recreate="never") as batch_op:
        batch_op.add_column(sa.Column("body_markdown", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("text_pending", sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    # SQL cannot make what is pending (Markdown, pysbd): rows still pending lose their Markdown source and keep
    # an empty body_html and summary. Read them first (`newsletter articles search` with any text makes summaries).
    with op.batch_alter_table("articles", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("text_pending")
        batch_op.drop_column("body_markdown")
