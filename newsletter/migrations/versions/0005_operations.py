"""deliveries.claim_token: the fencing token of a claim, so a lease can be renewed while a send is under way

Revision ID: 0005_operations
Revises: 0007_related_index
Create Date: 2026-12-01 04:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_operations"
down_revision = "0007_related_index"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # recreate="never": ALTER TABLE ADD COLUMN in place; rebuilding `deliveries` would trip the foreign keys on it.
    with op.batch_alter_table("deliveries", schema=None, recreate="never") as batch_op:
        batch_op.add_column(sa.Column("claim_token", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("claim_token")
