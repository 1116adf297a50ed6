"""issues.scheduled_at: publish an issue at a set time

Revision ID: 0003_schedule
Revises: 0002_bounces
Create Date: 2026-11-30 20:40:00

The new issue state ``scheduled`` needs no DDL (a non-native enum string without a CHECK constraint).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import newsletter.models

revision = "0003_schedule"
down_revision = "0002_bounces"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # recreate="never": ALTER TABLE ADD COLUMN in place; rebuilding `issues` would trip the foreign keys on it.
    with op.batch_alter_table("issues", schema=None, recreate="never") as batch_op:
        batch_op.add_column(sa.Column("scheduled_at", newsletter.models.UTCDateTime(timezone=True), nullable=True))
    with op.batch_alter_table("issues", schema=None) as batch_op:
        batch_op.create_index("ix_issues_status_scheduled_at", ["status", "scheduled_at"], unique=False)


def downgrade() -> None:
    op.execute("UPDATE issues SET status = 'draft' WHERE status = 'scheduled'")
    with op.batch_alter_table("issues", schema=None) as batch_op:
        batch_op.drop_index("ix_issues_status_scheduled_at")
    with op.batch_alter_table("issues", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("scheduled_at")
