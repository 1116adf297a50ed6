"""subscribers.source and subscribers.paused: how a subscriber signed up, and paused deliveries

Revision ID: 0009_subscriptions
Revises: 0005_operations
Create Date: 2026-12-01 07:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_subscriptions"
down_revision = "0005_operations"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # recreate="never": ALTER TABLE ADD COLUMN in place; rebuilding `subscribers` would trip the foreign keys on it.
    with op.batch_alter_table("subscribers", schema=None, recreate="never") as batch_op:
        batch_op.add_column(sa.Column("source", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("paused", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("subscribers", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("paused")
        batch_op.drop_column("source")
