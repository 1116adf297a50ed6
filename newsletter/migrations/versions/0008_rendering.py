"""issues.timezone: the IANA zone an issue was scheduled in, for the dates its editions show

Revision ID: 0008_rendering
Revises: 0006_editors
Create Date: 2026-12-01 04:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_rendering"
down_revision = "0006_editors"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # recreate="never": ALTER TABLE ADD COLUMN in place; rebuilding `issues` would trip the foreign keys on it.
    with op.batch_alter_table("issues", schema=None, recreate="never") as batch_op:
        batch_op.add_column(sa.Column("timezone", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("issues", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("timezone")
