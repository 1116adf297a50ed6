"""issues.pipeline_heartbeat_at: when a publish step last made progress

Revision ID: 0004_pipeline_heartbeat
Revises: 0003_schedule
Create Date: 2026-11-30 21:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import newsletter.models

revision = "0004_pipeline_heartbeat"
down_revision = "0003_schedule"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # recreate="never": ALTER TABLE ADD COLUMN in place; rebuilding `issues` would trip the foreign keys on it.
    with op.batch_alter_table("issues", schema=None, recreate="never") as batch_op:
        batch_op.add_column(sa.Column("pipeline_heartbeat_at", newsletter.models.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("issues", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("pipeline_heartbeat_at")
